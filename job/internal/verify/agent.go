package verify

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"path"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/k8secrets/k8secrets/internal/wellknown"
)

// status is the agent's answer on GET /status (the contract between the
// agent and the Job, STATUS-CONTRACT.md).
type status struct {
	Agent       string      `json:"agent"`
	Keyed       bool        `json:"keyed"`
	Directories []directory `json:"directories"`
}

type directory struct {
	Path     string `json:"path"`
	Loaded   string `json:"loaded"`
	LoadedAt string `json:"loadedAt"`
	Seen     string `json:"seen"`
	State    string `json:"state"`
	Error    string `json:"error"`
}

// Agent states of a directory.
const (
	agentLoaded  = "loaded"
	agentPending = "pending"
	agentFailed  = "failed"
	agentRefused = "refused"
)

// maxBody bounds what is read of an answer.
const maxBody = 1 << 20

// answer is what asking one agent gave.
type answer struct {
	code int
	body []byte
	// err says why there is no answer from the agent; forbidden when the
	// API server refused us its pod proxy.
	err       string
	forbidden bool
	// gone: the pod no longer exists.
	gone bool
}

func (c *checker) ask(ctx context.Context, p *corev1.Pod, port int32) answer {
	if c.via == Direct {
		return c.askDirect(ctx, p, port)
	}
	return c.askProxy(ctx, p, port)
}

func directClient() *http.Client {
	return &http.Client{
		Transport: &http.Transport{
			// Never through an HTTP proxy of the environment: pod IPs
			// are reached as they are.
			Proxy:                 nil,
			DialContext:           (&net.Dialer{Timeout: 3 * time.Second}).DialContext,
			ResponseHeaderTimeout: requestTimeout,
			MaxIdleConnsPerHost:   1,
			IdleConnTimeout:       30 * time.Second,
		},
		// A redirect is not the agent's answer.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

func (c *checker) askDirect(ctx context.Context, p *corev1.Pod, port int32) answer {
	if p.Status.PodIP == "" {
		return answer{err: "the pod has no IP yet"}
	}
	u := "http://" + net.JoinHostPort(p.Status.PodIP, strconv.Itoa(int(port))) + "/status"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return answer{err: err.Error()}
	}
	resp, err := c.http.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		msg := "GET " + u + ": " + err.Error()
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			msg += "; a NetworkPolicy may keep the Job from the pod: allow it, or verify with --verify-via=proxy"
		}
		return answer{err: msg}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return answer{err: "read " + u + ": " + err.Error()}
	}
	return answer{code: resp.StatusCode, body: body}
}

func (c *checker) askProxy(ctx context.Context, p *corev1.Pod, port int32) answer {
	body, err := c.client.CoreV1().Pods(p.Namespace).ProxyGet("http", p.Name, strconv.Itoa(int(port)), "/status", nil).DoRaw(ctx)
	if err == nil {
		return answer{code: http.StatusOK, body: body}
	}
	var se apierrors.APIStatus
	if !errors.As(err, &se) {
		return answer{err: fmt.Sprintf("pod proxy to %s: %v", p.Name, err)}
	}
	// The agent's own answer comes through as it is; the API server's (no
	// access, pod gone, agent not reachable from it) is a Status.
	var st metav1.Status
	if json.Unmarshal(body, &st) != nil || st.Kind != "Status" {
		return answer{code: int(se.Status().Code), body: body}
	}
	switch {
	case st.Code == http.StatusForbidden:
		return answer{forbidden: true, err: fmt.Sprintf("the API server's pod proxy is forbidden to this identity (pods/proxy get in %s): bind the Role %s, or run in the cluster to reach the agents directly", p.Namespace, Role)}
	case st.Code == http.StatusNotFound && st.Details != nil && st.Details.Kind == "pods":
		return answer{gone: true}
	}
	return answer{err: "pod proxy: " + short(st.Message)}
}

// portOf is the port of the agent's HTTP server: its --listen argument, as
// the Job writes it, else its probes' port, else the default.
func portOf(agent *corev1.Container) int32 {
	for _, a := range agent.Args {
		if v, ok := strings.CutPrefix(a, "--listen="); ok {
			_, p, err := net.SplitHostPort(v)
			if n, perr := strconv.Atoi(p); err == nil && perr == nil && n > 0 && n < 65536 {
				return int32(n)
			}
		}
	}
	for _, pr := range []*corev1.Probe{agent.ReadinessProbe, agent.LivenessProbe, agent.StartupProbe} {
		if pr != nil && pr.HTTPGet != nil && pr.HTTPGet.Port.IntValue() > 0 {
			return int32(pr.HTTPGet.Port.IntValue())
		}
	}
	return wellknown.AgentPort
}

// watchDirs are the agent's --watch directories.
func watchDirs(agent *corev1.Container) []string {
	var out []string
	for _, a := range agent.Args {
		if v, ok := strings.CutPrefix(a, "--watch="); ok {
			out = append(out, path.Clean(v))
		}
	}
	return out
}

// maxReason bounds an agent's error as we repeat it.
const maxReason = 300

func short(s string) string {
	s = strings.TrimSpace(s)
	if len(s) > maxReason {
		s = s[:maxReason] + "…"
	}
	return s
}

// judge sets out's state from the agent's answer body, for the content
// identified by want in the directory the agent watches.
func judge(out *Pod, body []byte, want string, dirs []string) {
	var st status
	if err := json.Unmarshal(body, &st); err != nil {
		out.State, out.Reason = Unknown, "its agent's /status is not the JSON this Job knows: "+short(err.Error())
		return
	}
	out.Agent = st.Agent
	if !st.Keyed {
		out.State, out.Reason = Unknown, "its agent serves no content identifiers (keyed: false): it did not get a valid content key"
		return
	}
	d := pick(st.Directories, dirs)
	if d == nil {
		out.State, out.Reason = Unknown, fmt.Sprintf("its agent reports no directory %s", strings.Join(dirs, ", "))
		return
	}
	out.Loaded = d.Loaded
	out.LoadedAt, _ = time.Parse(time.RFC3339Nano, d.LoadedAt)
	seenCurrent := d.Seen == want
	switch {
	case d.Loaded == want:
		out.State = Current
	case d.State == agentFailed:
		out.State, out.Reason = Failed, "reload failed: "+short(d.Error)
		if !seenCurrent {
			out.Reason += " (of content older than the Secret's; the kubelet has not written the current content yet)"
		}
	case d.State == agentRefused:
		out.State, out.Reason = Refused, "content refused as invalid: "+short(d.Error)
		if !seenCurrent {
			out.Reason += " (content older than the Secret's; the kubelet has not written the current content yet)"
		}
	case !seenCurrent:
		out.State, out.Reason = Stale, "old content loaded; the kubelet has not written the current content into the pod yet (refresh makes it do so now)"
		out.undelivered = true
	default:
		out.State, out.Reason = Stale, "old content loaded; the agent has the current content and its reload is pending"
	}
	if out.State == Stale && d.Loaded == "" {
		out.Reason = strings.Replace(out.Reason, "old content loaded", "nothing loaded yet", 1)
	}
}

// pick finds the directory the agent watches for this Secret; with one
// watched and one reported, that one.
func pick(ds []directory, dirs []string) *directory {
	for i := range ds {
		for _, w := range dirs {
			if path.Clean(ds[i].Path) == w {
				return &ds[i]
			}
		}
	}
	if len(ds) == 1 && len(dirs) <= 1 {
		return &ds[0]
	}
	return nil
}
