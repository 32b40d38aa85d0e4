package api

import (
	"encoding/json"

	"lifeboat/catalog"
)

// VerifyBootRequest is POST /api/v1/points/{id}/verify-boot: boot the
// point as a throwaway VM on Node's hypervisor and record the verdict.
// It becomes a verify-boot job pinned to the node.
type VerifyBootRequest struct {
	// Node is the agent (node name or ID) whose hypervisor boots the
	// point; "" means the node the point was taken on.
	Node string `json:"node,omitempty"`
	// Check is a shell command run in the guest through its agent; a
	// non-zero exit fails the point (check-failed).
	Check string `json:"check,omitempty"`
	// TimeoutSeconds bounds the wait for the guest agent (default 60,
	// at most 3600).
	TimeoutSeconds int `json:"timeout_seconds,omitempty"`
}

// VerifyBootParams are a verify-boot job's params.
type VerifyBootParams struct {
	Point          string `json:"point"`
	Check          string `json:"check,omitempty"`
	TimeoutSeconds int    `json:"timeout_seconds,omitempty"`
	// Reason: "manual" (the API) or "group" (a group's verify-boot of
	// its new point).
	Reason string `json:"reason,omitempty"`
}

// VerifyBootResult is what an agent reports when a verify-boot ran to a
// verdict, whatever the verdict: its summary, and its object in the
// repository, which the server reads before it records anything. The
// server fails the job when the point did not pass.
type VerifyBootResult struct {
	Verdict   catalog.BootVerdict `json:"verdict"`
	VM        string              `json:"vm,omitempty"`
	Throwaway string              `json:"throwaway,omitempty"`
}

// BootVerdict is a point's newest verdict as GET /api/v1/points/{id}
// shows it: the catalog's summary plus, read from the repository, the
// serial console's log (its first 8 KiB and last 56 KiB), the check's
// outcome and notes.
type BootVerdict struct {
	catalog.BootVerdict
	VM        string `json:"vm,omitempty"`
	Throwaway string `json:"throwaway,omitempty"`
	// Check is the check command's outcome (recovery.CheckResult).
	Check          json.RawMessage `json:"check,omitempty"`
	SerialLog      string          `json:"serial_log"`
	SerialLogBytes int64           `json:"serial_log_bytes"`
	Notes          []string        `json:"notes,omitempty"`
	// Error says why the whole record could not be read (the summary
	// still stands).
	Error string `json:"error,omitempty"`
}

// PointDetail is GET /api/v1/points/{id}: the point with its files and
// notes, and its newest boot verdict when it was ever verify-booted.
type PointDetail struct {
	catalog.Point
	VerifyBoot *BootVerdict `json:"verify_boot,omitempty"`
}
