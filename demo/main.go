// Command k8secrets-demo is the demo app of `make demo`: a static HTTP server
// that loads its Secret files at start and again on SIGHUP (or POST
// /-/reload), and serves what it loaded, how often it reloaded and when it
// started. It prints the non-secret "version" key only, never the others.
package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"
)

type state struct {
	mu      sync.Mutex
	dir     string
	Version string    `json:"version"`
	Digest  string    `json:"digest"`
	Reloads int       `json:"reloads"`
	Started time.Time `json:"started"`
	Loaded  time.Time `json:"loaded"`
	PID     int       `json:"pid"`
	// EnvVersion is the environment variable --env-version names, read
	// once at start: for an app that takes the (non-secret) version key
	// of its Secret through env.
	EnvVersion string `json:"envVersion,omitempty"`
}

// load reads every file of the Secret volume (the kubelet's user-visible
// links, not its ..-prefixed internals).
func (s *state) load() error {
	entries, err := os.ReadDir(s.dir)
	if os.IsNotExist(err) {
		// Not mounted (yet): the demo starts before the Job injects it.
		s.Version, s.Digest, s.Loaded = "", "not mounted", time.Now()
		return nil
	}
	if err != nil {
		return err
	}
	var names []string
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), "..") {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	h := sha256.New()
	version := ""
	for _, n := range names {
		b, err := os.ReadFile(filepath.Join(s.dir, n))
		if err != nil {
			return err
		}
		h.Write([]byte(n + "\x00"))
		h.Write(b)
		h.Write([]byte{0})
		if n == "version" {
			version = strings.TrimSpace(string(b))
		}
	}
	s.Version, s.Digest, s.Loaded = version, hex.EncodeToString(h.Sum(nil))[:12], time.Now()
	return nil
}

func main() {
	dir := flag.String("secret-dir", "/var/run/secrets/k8secrets/demo-secret", "directory of the mounted Secret (it may appear later)")
	listen := flag.String("listen", ":8080", "address to serve on")
	tlsListen := flag.String("tls-listen", "", "also serve HTTPS on this address, with tls.crt and tls.key of --tls-dir (read at start)")
	tlsDir := flag.String("tls-dir", "", "directory of the HTTPS certificate and key")
	envVersion := flag.String("env-version", "", "serve this environment variable's value, read at start, as envVersion (the Secret's non-secret version key, taken through env)")
	exitOn := flag.String("exit-on-version", "", "exit 1 at start when the Secret's version is this: an app that cannot run with some content (the e2e tests' failed rotation)")
	probe := flag.Bool("probe", false, "be an exec probe: GET /healthz of the app serving on --listen, exit 0 if it answers 200")
	flag.Parse()
	if *probe {
		os.Exit(probeHealth(*listen))
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))

	s := &state{dir: *dir, Started: time.Now(), PID: os.Getpid()}
	if *envVersion != "" {
		s.EnvVersion = os.Getenv(*envVersion)
	}
	if err := s.load(); err != nil {
		log.Error("load secret", "dir", *dir, "error", err)
		os.Exit(1)
	}
	if *exitOn != "" && s.Version == *exitOn {
		log.Error("refusing to start with this content", "version", s.Version)
		os.Exit(1)
	}
	log.Info("loaded", "version", s.Version, "digest", s.Digest)
	reload := func(why string) {
		s.mu.Lock()
		defer s.mu.Unlock()
		if err := s.load(); err != nil {
			log.Error("reload", "why", why, "error", err)
			return
		}
		s.Reloads++
		log.Info("reloaded", "why", why, "version", s.Version, "digest", s.Digest, "reloads", s.Reloads)
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	go func() {
		for range hup {
			reload("SIGHUP")
		}
	}()

	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		s.mu.Lock()
		defer s.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(s)
	})
	mux.HandleFunc("POST /-/reload", func(w http.ResponseWriter, _ *http.Request) { reload("HTTP") })
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	srv := &http.Server{Addr: *listen, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM, os.Interrupt)
	var tlsSrv *http.Server
	if *tlsListen != "" {
		tlsSrv = &http.Server{Addr: *tlsListen, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go func() {
			err := tlsSrv.ListenAndServeTLS(filepath.Join(*tlsDir, "tls.crt"), filepath.Join(*tlsDir, "tls.key"))
			if err != nil && err != http.ErrServerClosed {
				log.Error("serve HTTPS", "error", err)
				os.Exit(1)
			}
		}()
	}
	go func() {
		<-term
		if tlsSrv != nil {
			_ = tlsSrv.Close()
		}
		_ = srv.Close()
	}()
	if err := srv.ListenAndServe(); err != nil && err != http.ErrServerClosed {
		log.Error("serve", "error", err)
		os.Exit(1)
	}
}

// probeHealth is the demo's exec probe (the image has no shell or curl).
func probeHealth(listen string) int {
	_, port, _ := strings.Cut(listen, ":")
	client := &http.Client{Timeout: time.Second}
	resp, err := client.Get("http://127.0.0.1:" + port + "/healthz")
	if err != nil {
		return 1
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 1
	}
	return 0
}
