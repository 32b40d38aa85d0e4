//go:build !unix

package lab

import (
	"errors"
	"os"
)

func lockShared(*os.File) error      { return errors.New("lab: needs Linux") }
func tryLockExclusive(*os.File) bool { return false }
