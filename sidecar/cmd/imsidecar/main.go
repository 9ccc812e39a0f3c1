// Command imsidecar runs the Expresso IM sidecar. See the package sidecar
// and the README for what it does and how to configure it.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"expressolivre.org/imsidecar/sidecar"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := sidecar.Run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "imsidecar:", err)
		os.Exit(1)
	}
}
