//go:build !linux

package local

func syncFS(string) (bool, error) { return false, nil }
