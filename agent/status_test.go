package main

import (
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/k8secrets/k8secrets/internal/contentid"
)

// statusDoc is GET /status as STATUS-CONTRACT.md defines it, decoded
// independently of the agent's own types.
type statusDoc struct {
	Agent       string `json:"agent"`
	Keyed       bool   `json:"keyed"`
	Directories []struct {
		Path        string     `json:"path"`
		Loaded      string     `json:"loaded"`
		LoadedAt    *time.Time `json:"loadedAt"`
		Seen        string     `json:"seen"`
		State       string     `json:"state"`
		Error       string     `json:"error"`
		LastAttempt *time.Time `json:"lastAttempt"`
	} `json:"directories"`
}

// status reads the agent's /status; the body must name no Secret value.
func (a *agent) status(t *testing.T) statusDoc {
	t.Helper()
	resp, err := http.Get("http://" + a.addr + "/status")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("GET /status = %d %s; want 200 application/json", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	if strings.Contains(string(b), "s3cr3t") {
		t.Fatal("GET /status contains a Secret value")
	}
	var doc statusDoc
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatalf("GET /status: %v", err)
	}
	return doc
}

// dir is the loaded id, seen id, state and error of dir in doc.
func (d statusDoc) dir(t *testing.T, dir string) (loaded, seen, state, errMsg string) {
	t.Helper()
	for _, s := range d.Directories {
		if s.Path == dir {
			return s.Loaded, s.Seen, s.State, s.Error
		}
	}
	t.Fatalf("GET /status has no directory %s", dir)
	return
}

// jobID is what the Job computes over the Secret's data (secret.Data).
func jobID(t *testing.T, key string, data map[string]string) string {
	t.Helper()
	m := map[string][]byte{}
	for k, v := range data {
		m[k] = []byte(v)
	}
	id, err := contentid.Of(key, m)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// TestStatus runs the agent on two kubelet volumes, a Secret whose reload
// goes to an HTTP endpoint and a TLS Secret, and checks GET /status in each
// state against the ids the Job computes independently over the data: the
// start-up baseline, a reload that fails (500: failed, the old content still
// loaded), its retry that succeeds, and a certificate not valid yet
// (refused, the valid one still loaded).
func TestStatus(t *testing.T) {
	key, err := contentid.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv(contentid.KeyEnv, key)
	root := t.TempDir()
	credsDir, tlsDir := filepath.Join(root, "db-creds"), filepath.Join(root, "tls")
	now := time.Now()
	crt, tkey := tlsPair(t, now.Add(-time.Hour), now.Add(time.Hour))
	tlsData := map[string]string{"tls.crt": crt, "tls.key": tkey}
	one := map[string]string{secretKey: secretValue("one"), "username": "app"}
	credsVol := newVolume(t, credsDir, one)
	tlsVol := newVolume(t, tlsDir, tlsData)
	srv := newAppServer(t, credsDir)
	cfg := testConfig(credsDir, tlsDir)
	cfg.Reload = []string{"http:" + srv.url}
	cfg.MinInterval = 0
	a := startAgent(t, cfg)

	doc := a.status(t)
	if !doc.Keyed || doc.Agent == "" || len(doc.Directories) != 2 {
		t.Fatalf("GET /status = keyed %v, agent %q, %d directories; want keyed, a version, 2", doc.Keyed, doc.Agent, len(doc.Directories))
	}
	for _, c := range []struct {
		dir  string
		data map[string]string
	}{{credsDir, one}, {tlsDir, tlsData}} {
		loaded, seen, state, _ := doc.dir(t, c.dir)
		if want := jobID(t, key, c.data); loaded != want || seen != want || state != "loaded" {
			t.Errorf("%s at start: loaded %s, seen %s, state %s; want both %s, loaded", c.dir, loaded, seen, state, want)
		}
	}
	if d := doc.Directories[0]; d.LoadedAt == nil || d.LastAttempt != nil {
		t.Errorf("at start: loadedAt %v, lastAttempt %v; want the time of the first reading, none", d.LoadedAt, d.LastAttempt)
	}

	// The app's reload endpoint fails: the new content is seen, the old
	// one is still what the app has loaded.
	srv.mu.Lock()
	srv.fail = 1 << 30
	srv.mu.Unlock()
	two := map[string]string{secretKey: secretValue("two"), "username": "app"}
	write(t, credsVol, two)
	waitFor(t, "state failed", func() bool { _, _, state, _ := a.status(t).dir(t, credsDir); return state == "failed" })
	loaded, seen, _, errMsg := a.status(t).dir(t, credsDir)
	if loaded != jobID(t, key, one) || seen != jobID(t, key, two) || !strings.Contains(errMsg, "status 500") {
		t.Errorf("failed reload: loaded %s, seen %s, error %q; want the first content, the second, status 500", loaded, seen, errMsg)
	}
	if d := a.status(t).Directories[0]; d.LastAttempt == nil {
		t.Error("failed reload: no lastAttempt")
	}

	// The endpoint recovers: the retry loads the new content.
	srv.mu.Lock()
	srv.fail = 0
	srv.mu.Unlock()
	waitFor(t, "the retry", func() bool { loaded, _, _, _ := a.status(t).dir(t, credsDir); return loaded == jobID(t, key, two) })
	if loaded, seen, state, errMsg := a.status(t).dir(t, credsDir); seen != loaded || state != "loaded" || errMsg != "" {
		t.Errorf("after the retry: seen %s, state %s, error %q; want seen == loaded %s, loaded, none", seen, state, errMsg, loaded)
	}

	// A certificate not valid for an hour yet: refused, never reloaded.
	calls := len(srv.calls())
	aheadCrt, aheadKey := tlsPair(t, now.Add(time.Hour), now.Add(2*time.Hour))
	ahead := map[string]string{"tls.crt": aheadCrt, "tls.key": aheadKey}
	write(t, tlsVol, ahead)
	waitFor(t, "state refused", func() bool { _, _, state, _ := a.status(t).dir(t, tlsDir); return state == "refused" })
	loaded, seen, _, errMsg = a.status(t).dir(t, tlsDir)
	if loaded != jobID(t, key, tlsData) || seen != jobID(t, key, ahead) || errMsg == "" {
		t.Errorf("refused: loaded %s, seen %s, error %q; want the valid pair, the new one, a reason", loaded, seen, errMsg)
	}
	if c := len(srv.calls()); c != calls {
		t.Errorf("%d reloads for refused content; want 0", c-calls)
	}

	// The same ids in the info metric.
	if v := a.metric(t, `k8secrets_agent_loaded_info{path="`+credsDir+`",version="`+dataTarget(t, credsDir)+`",content_id="`+jobID(t, key, two)+`"}`); v != 1 {
		t.Errorf("loaded_info of %s with the loaded content id = %v; want 1", credsDir, v)
	}
	if strings.Contains(a.logs.String(), key) {
		t.Error("the agent's logs contain the content key")
	}
}

// TestStatusPending: content that the minimum interval holds back is
// pending, the content reloaded before it still loaded.
func TestStatusPending(t *testing.T) {
	key, err := contentid.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv(contentid.KeyEnv, key)
	dir := filepath.Join(t.TempDir(), "db-creds")
	vol := newVolume(t, dir, secretPayload("one"))
	srv := newAppServer(t, dir)
	cfg := testConfig(dir)
	cfg.Reload = []string{"http:" + srv.url}
	cfg.MinInterval = time.Hour
	a := startAgent(t, cfg)
	write(t, vol, secretPayload("two"))
	waitFor(t, "the first reload", func() bool {
		loaded, _, _, _ := a.status(t).dir(t, dir)
		return loaded == jobID(t, key, secretPayload("two"))
	})
	write(t, vol, secretPayload("three"))
	waitFor(t, "the third content seen", func() bool {
		_, seen, _, _ := a.status(t).dir(t, dir)
		return seen == jobID(t, key, secretPayload("three"))
	})
	if loaded, _, state, _ := a.status(t).dir(t, dir); loaded != jobID(t, key, secretPayload("two")) || state != "pending" {
		t.Errorf("within --min-interval: loaded %s, state %s; want the second content, pending", loaded, state)
	}
}

// TestStatusKeyFromEnvironmentOnly runs the agent binary: the key reaches it
// only through its environment; an invalid one is reported without its
// value, and the agent serves no ids.
func TestStatusKeyFromEnvironmentOnly(t *testing.T) {
	key, err := contentid.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, key string
		keyed     bool
		log       string
	}{
		{"valid key", key, true, ""},
		{"invalid key", "s3cr3t-not-a-key", false, "ignoring an invalid content key"},
		{"no key", "", false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "db-creds")
			newVolume(t, dir, secretPayload("one"))
			cmd, out := agentProcess(t, "--watch="+dir, "--reload=http:http://127.0.0.1:1/-/reload", "--listen=127.0.0.1:0", "--log-format=json")
			if tt.key != "" {
				cmd.Env = append(cmd.Env, contentid.KeyEnv+"="+tt.key)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
			a := &agent{logs: out}
			waitFor(t, "the agent to start", func() bool {
				_, rest, ok := strings.Cut(out.String(), `"listen":"`)
				if ok {
					a.addr, _, _ = strings.Cut(rest, `"`)
				}
				return ok && a.get(t, "/readyz") == 200
			})
			doc := a.status(t)
			loaded, seen, state, _ := doc.dir(t, dir)
			want := ""
			if tt.keyed {
				want = jobID(t, key, secretPayload("one"))
			}
			if doc.Keyed != tt.keyed || loaded != want || seen != want || state != "loaded" {
				t.Errorf("GET /status = keyed %v, loaded %q, seen %q, state %s; want keyed %v, ids %q, loaded", doc.Keyed, loaded, seen, state, tt.keyed, want)
			}
			logs := out.String()
			if !strings.Contains(logs, tt.log) {
				t.Errorf("logs lack %q:\n%s", tt.log, logs)
			}
			if tt.key != "" && strings.Contains(logs, tt.key) {
				t.Errorf("the logs contain the key:\n%s", logs)
			}
		})
	}
}

// dataTarget is the name "..data" points at in a kubelet volume.
func dataTarget(t *testing.T, dir string) string {
	t.Helper()
	target, err := os.Readlink(filepath.Join(dir, "..data"))
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Base(target)
}

// TestStatusStartupStale: the Secret changed while the agent was down and
// the app (as another user: the signal fails with EPERM) started before
// the change. The agent's start-up reading is not what the app has loaded:
// /status says loaded "" and failed, with the reason, never the id of the
// content the app has not read.
func TestStatusStartupStale(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to run the app and the agent as two other users")
	}
	key, err := contentid.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	shared, dir, vol, app := foreignApp(t, "stale-app")
	time.Sleep(25 * time.Millisecond) // the app starts certainly before the update
	write(t, vol, secretPayload("two"))

	cmd := exec.Command(filepath.Join(shared, "agent"), "--watch="+dir, "--reload=signal:SIGHUP", "--process=stale-app",
		"--listen=127.0.0.1:0", "--log-format=json", "--min-interval=0")
	cmd.Env = append(os.Environ(), "GORACE=atexit_sleep_ms=0", "AGENT_TEST_HELPER=agent", contentid.KeyEnv+"="+key)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65533, Gid: 65533}}
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _, _ = cmd.Process.Wait() })
	a := &agent{logs: out}
	waitFor(t, "the agent to start", func() bool {
		_, rest, ok := strings.Cut(out.String(), `"listen":"`)
		if ok {
			a.addr, _, _ = strings.Cut(rest, `"`)
		}
		return ok && a.get(t, "/readyz") == 200
	})
	waitFor(t, "the failed start-up reload", func() bool { _, _, state, _ := a.status(t).dir(t, dir); return state == "failed" })
	loaded, seen, _, errMsg := a.status(t).dir(t, dir)
	if loaded != "" || seen != jobID(t, key, secretPayload("two")) || !strings.Contains(errMsg, "operation not permitted") {
		t.Errorf("app older than the content, its reload failing: loaded %q, seen %s, error %q; want \"\" (unknown), the content on disk, EPERM", loaded, seen, errMsg)
	}
	if got := app.events("hup"); len(got) != 0 {
		t.Errorf("app got %q; want nothing", got)
	}
}
