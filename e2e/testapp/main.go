// Command testapp is the workload of the e2e tests, shipped FROM scratch: it
// runs until SIGTERM. The same binary answers to other names, so that tests
// can look inside the pod through `kubectl exec` with no shell or coreutils
// in the image:
//
//	cat PATH...   prints files
//	apicheck      calls the API server through the kubernetes Service, by
//	              its cluster DNS name, with the pod's service-account token
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"
)

func main() {
	switch filepath.Base(os.Args[0]) {
	case "cat":
		os.Exit(cat(os.Args[1:]))
	case "apicheck":
		os.Exit(apicheck())
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

const saDir = "/var/run/secrets/kubernetes.io/serviceaccount"

// apicheck prints "ok VERSION" once GET /version through the kubernetes
// Service answers, retrying for 10 s: a pod's first call may fail while the
// node's Service rules settle.
func apicheck() int {
	ca, err := os.ReadFile(saDir + "/ca.crt")
	if err != nil {
		fmt.Fprintln(os.Stderr, "apicheck:", err)
		return 1
	}
	token, err := os.ReadFile(saDir + "/token")
	if err != nil {
		fmt.Fprintln(os.Stderr, "apicheck:", err)
		return 1
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	client := &http.Client{
		Timeout:   3 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		v, err := version(ctx, client, string(token))
		if err == nil {
			fmt.Println("ok", v)
			return 0
		}
		select {
		case <-ctx.Done():
			fmt.Fprintln(os.Stderr, "apicheck:", err)
			return 1
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func version(ctx context.Context, client *http.Client, token string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://kubernetes.default.svc.cluster.local/version", nil)
	if err != nil {
		return "", err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET /version: %s", resp.Status)
	}
	var v struct {
		GitVersion string `json:"gitVersion"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
		return "", fmt.Errorf("GET /version: %w", err)
	}
	return v.GitVersion, nil
}
