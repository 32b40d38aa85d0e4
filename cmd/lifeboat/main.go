// Command lifeboat protects and recovers virtual machines. Each subcommand
// wires packages together; the logic lives in those packages.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"golang.org/x/term"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

type command struct {
	name    string
	summary string
	run     func(ctx context.Context, env *env, args []string) error
}

// env is what every command gets: streams and settings, no globals.
type env struct {
	stdout, stderr io.Writer
	getenv         func(string) string
	log            *slog.Logger
	tty            bool // stderr is a terminal: show progress bars
}

func commands() []command {
	return []command{
		{"repo", "repo init: create a repository", cmdRepo},
		{"backup", "back up an image file or a VM folder", cmdBackup},
		{"points", "list recovery points", cmdPoints},
		{"restore", "restore a point into a folder", cmdRestore},
		{"recover", "recover a VM: in place (original), as a VM on any host (vm), or to a folder (folder)", cmdRecover},
		{"verify-boot", "boot a point as a throwaway VM, wait for its guest agent, record the verdict", cmdVerifyBoot},
		{"items", "item-level recovery: ls, find, extract files inside a point's disks", cmdItems},
		{"tape", "copy points to tape and back: library-create, add, write, scan, restore", cmdTape},
		{"verify", "re-hash every chunk and name the points a bad one affects", cmdVerify},
		{"prune", "forget points by a retention policy", cmdPrune},
		{"gc", "delete data no point references", cmdGC},
		{"server", "run the server: catalog, repository, HTTPS API, scheduler", cmdServer},
		{"agent", "run an agent on a host (enroll, report, run jobs); agent list|revoke|inventory", cmdAgent},
		{"token", "token create|list: one-time enrollment tokens", cmdToken},
		{"cluster", "cluster create|list|volume add|volume list", cmdCluster},
		{"group", "group create|add|list|run: protection groups", cmdGroup},
		{"protect", "add the VM at a path to a group (the shared-volume rule applies)", cmdProtect},
		{"vm", "vm list: VMs the agents reported; vm rebuild FOLDER | make-ha VM on a host", cmdVM},
		{"job", "job list|show|cancel", cmdJob},
		{"point", "point list|restore: points in the server's catalog", cmdPoint},
		{"alert", "alert list|ack", cmdAlert},
		{"status", "the server's status", cmdStatus},
		{"version", "print the version", cmdVersion},
		{"completion", "print a shell completion script: bash, zsh or fish", cmdCompletion},
	}
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	e := &env{stdout: os.Stdout, stderr: os.Stderr, getenv: os.Getenv, tty: term.IsTerminal(int(os.Stderr.Fd()))}
	var h slog.Handler = slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})
	if e.tty {
		h = slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})
	}
	e.log = slog.New(h)
	os.Exit(run(ctx, e, os.Args[1:]))
}

func run(ctx context.Context, e *env, args []string) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(e.stderr)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	for _, c := range append(commands(), hiddenCommands()...) {
		if c.name == args[0] {
			if jsonRequested(args[1:]) {
				e.tty = false // no progress bars around machine-readable output
			}
			err := c.run(ctx, e, args[1:])
			if err == nil {
				return 0
			}
			var he helpError
			if errors.As(err, &he) {
				he.fs.SetOutput(e.stderr)
				he.fs.Usage()
				return 0
			}
			if errors.Is(err, flag.ErrHelp) {
				return 0
			}
			var ue usageError
			if errors.As(err, &ue) {
				fmt.Fprintf(e.stderr, "lifeboat %s: %v\n", c.name, err)
				return 2
			}
			fmt.Fprintf(e.stderr, "lifeboat %s: %v\n", c.name, err)
			return 1
		}
	}
	fmt.Fprintf(e.stderr, "lifeboat: unknown command %q\n", args[0])
	usage(e.stderr)
	return 2
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: lifeboat COMMAND [flags]\n\ncommands:")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-8s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w, "\nRun 'lifeboat COMMAND -h' for a command's flags.")
}

type usageError struct{ error }

// helpError is -h: run prints the flag set's usage. Carrying the flag set
// also lets the completion script list every command's flags without
// running the command.
type helpError struct{ fs *flag.FlagSet }

func (h helpError) Error() string        { return flag.ErrHelp.Error() }
func (h helpError) Is(target error) bool { return target == flag.ErrHelp }

func usagef(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

// parse parses flags that may stand before or after positional arguments.
func parse(fs *flag.FlagSet, args []string) ([]string, error) {
	fs.SetOutput(io.Discard)
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, helpError{fs}
			}
			return nil, usageError{err}
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		if args[0] == "--" {
			return append(pos, args[1:]...), nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}
