// Command testapp is the workload of the e2e tests, shipped FROM scratch: it
// runs until SIGTERM, and the same binary installed as /bin/cat prints files,
// so that tests can read a mounted file through `kubectl exec` without a
// shell or coreutils in the image.
package main

import (
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
)

func main() {
	if filepath.Base(os.Args[0]) == "cat" {
		os.Exit(cat(os.Args[1:]))
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	fmt.Println("testapp: running")
	<-sig
}

func cat(paths []string) int {
	code := 0
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			fmt.Fprintln(os.Stderr, "cat:", err)
			code = 1
			continue
		}
		if _, err := io.Copy(os.Stdout, f); err != nil {
			fmt.Fprintf(os.Stderr, "cat: read %s: %v\n", p, err)
			code = 1
		}
		f.Close()
	}
	return code
}
