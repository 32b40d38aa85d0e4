// Package hyperv reads Hyper-V VM configurations offline, from the files
// of a VM folder, on any operating system, and turns them into the
// hypervisor-neutral vmconfig.VM that recovery points store.
//
// Two formats carry the same typed key tree (configuration/properties/name,
// settings/processors/count, _<device GUID>_/controller0/drive0/pathname,
// manifest/vdevNNN, ...):
//
//   - XML, Windows Server 2008 R2 to 2012 R2 ("Virtual Machines/<GUID>.xml"):
//     a <configuration> root, typed leaves (type="string|integer|bool|bytes"),
//     device sections named _<guid>_. ParseXML copes with real UTF-16LE files
//     and with ASCII copies that still declare UTF-16.
//   - VMCX, Windows Server 2016 and later (.vmcx, and .vmrs runtime state):
//     an undocumented binary container of checksummed key tables. ParseVMCX
//     reads the tables fully (not a string scan) and verifies every CRC.
//
// Config.VM extracts the summary from either tree; Layout finds the files
// of a VM folder, maps the configuration's absolute Windows disk paths
// (C:\ClusterStorage\Volume1\vm\Virtual Hard Disks\a.vhdx) to files of the
// folder, and adds saved state and snapshots.
//
// # Seam for a live Windows driver
//
// Nothing here calls Windows. Backing up a running VM consistently needs a
// driver that runs on the Hyper-V host (build tag windows, a later
// package): it asks Hyper-V for a production checkpoint (WMI
// Msvm_VirtualSystemSnapshotService.CreateSnapshot, which runs VSS in the
// guest through the integration services; on 2008 R2/2012 R2 the Hyper-V
// VSS writer on the host instead), reads the changed ranges since the last
// reference point through Resilient Change Tracking (2016+,
// Msvm_ImageManagementService / virtdisk QueryChangesVirtualDisk), and
// converts the checkpoint to a reference point afterwards. Its output is
// exactly what this package consumes: a folder (or a VSS shadow copy path
// of one) in the Layout above, plus a change map per disk for backup's
// --changed. So the live driver only has to produce a stable folder view
// and change maps; parsing, path mapping and the summary stay here and are
// tested on Linux.
package hyperv
