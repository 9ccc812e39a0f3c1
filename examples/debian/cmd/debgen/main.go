// Command debgen writes the files of imsidecar's Debian package that come
// from the flag set: the man page and /etc/default/imsidecar. build.sh runs
// it; see the package debian.
//
//	go run ./examples/debian/cmd/debgen -man imsidecar.8 -default imsidecar.default -version V -date YYYY-MM-DD
package main

import (
	"bytes"
	"flag"
	"fmt"
	"os"

	"expressolivre.org/imsidecar/examples/debian"
	"expressolivre.org/imsidecar/sidecar"
)

func main() {
	man := flag.String("man", "", "write the man page imsidecar(8) to this file")
	def := flag.String("default", "", "write /etc/default/imsidecar to this file")
	version := flag.String("version", "dev", "version named in the man page")
	date := flag.String("date", "", "date of the man page, YYYY-MM-DD (required with -man)")
	flag.Parse()
	if err := run(*man, *def, *version, *date); err != nil {
		fmt.Fprintln(os.Stderr, "debgen:", err)
		os.Exit(1)
	}
}

func run(man, def, version, date string) error {
	flags := sidecar.Flags()
	if man != "" {
		if date == "" {
			return fmt.Errorf("-date is required with -man")
		}
		var b bytes.Buffer
		if err := debian.ManPage(&b, flags, version, date); err != nil {
			return err
		}
		if err := os.WriteFile(man, b.Bytes(), 0o644); err != nil {
			return err
		}
	}
	if def != "" {
		var b bytes.Buffer
		if err := debian.DefaultFile(&b, flags); err != nil {
			return err
		}
		if err := os.WriteFile(def, b.Bytes(), 0o644); err != nil {
			return err
		}
	}
	return nil
}
