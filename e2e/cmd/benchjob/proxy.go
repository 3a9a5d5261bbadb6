package main

import (
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// counter is a reverse proxy in front of the API server that counts the
// requests passing through it by verb and resource. The Job's kubeconfig
// points at it (plain HTTP on loopback, no credentials); the proxy talks to
// the API server with the admin credentials. Watches stream through.
type counter struct {
	srv *http.Server
	url string

	mu     sync.Mutex
	counts map[string]*tally
}

// tally is one verb and resource: how many requests, and when the first and
// the last began (the rate of a client-side throttled burst shows there).
type tally struct {
	N           int
	First, Last time.Time
	// Busy is the time the API server took, summed (for a watch: how long
	// it stayed open).
	Busy time.Duration
}

func newCounter(upstream *rest.Config) (*counter, error) {
	target, err := url.Parse(upstream.Host)
	if err != nil {
		return nil, err
	}
	rt, err := rest.TransportFor(upstream)
	if err != nil {
		return nil, err
	}
	c := &counter{counts: map[string]*tally{}}
	rp := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(target)
			r.Out.Host = target.Host
		},
		Transport:     rt,
		FlushInterval: -1,
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	c.url = "http://" + ln.Addr().String()
	c.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		key, start := classify(r), time.Now()
		c.count(key, start)
		rp.ServeHTTP(w, r)
		c.done(key, time.Since(start))
	})}
	go c.srv.Serve(ln)
	return c, nil
}

func (c *counter) count(key string, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := c.counts[key]
	if t == nil {
		t = &tally{First: now}
		c.counts[key] = t
	}
	t.N++
	t.Last = now
}

func (c *counter) done(key string, d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if t := c.counts[key]; t != nil {
		t.Busy += d
	}
}

// take returns the counts so far and starts again from zero.
func (c *counter) take() map[string]tally {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]tally, len(c.counts))
	for k, t := range c.counts {
		out[k] = *t
	}
	c.counts = map[string]*tally{}
	return out
}

func (c *counter) close() { c.srv.Close() }

// kubeconfig writes a kubeconfig for the proxy.
func (c *counter) kubeconfig(path, namespace string) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["bench"] = &clientcmdapi.Cluster{Server: c.url}
	cfg.AuthInfos["bench"] = &clientcmdapi.AuthInfo{}
	cfg.Contexts["bench"] = &clientcmdapi.Context{Cluster: "bench", AuthInfo: "bench", Namespace: namespace}
	cfg.CurrentContext = "bench"
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		return fmt.Errorf("write kubeconfig %s: %w", path, err)
	}
	return os.Chmod(path, 0o600)
}

// classify names a request "verb resource", the verb as the API server's
// audit log would say it (get, list, watch, create, update, patch, apply,
// delete), prefixed with "dry-run " for dryRun=All, and the resource with
// its subresource ("deployments/status"); discovery is "get discovery".
func classify(r *http.Request) string {
	parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	var rest []string
	switch {
	case len(parts) >= 2 && parts[0] == "api":
		rest = parts[2:] // api/v1/...
	case len(parts) >= 3 && parts[0] == "apis":
		rest = parts[3:] // apis/group/version/...
	}
	if len(rest) == 0 {
		return strings.ToLower(r.Method) + " discovery"
	}
	if rest[0] == "namespaces" && len(rest) >= 3 {
		rest = rest[2:]
	}
	resource, named := rest[0], len(rest) >= 2
	if len(rest) >= 3 {
		resource += "/" + rest[2]
	}
	q := r.URL.Query()
	var verb string
	switch r.Method {
	case http.MethodGet:
		switch {
		case q.Get("watch") == "true" || q.Get("watch") == "1":
			verb = "watch"
		case named:
			verb = "get"
		default:
			verb = "list"
		}
	case http.MethodPost:
		verb = "create"
	case http.MethodPut:
		verb = "update"
	case http.MethodPatch:
		verb = "patch"
		if strings.HasPrefix(r.Header.Get("Content-Type"), "application/apply-patch") {
			verb = "apply"
		}
	case http.MethodDelete:
		verb = "delete"
		if !named {
			verb = "deletecollection"
		}
	default:
		verb = strings.ToLower(r.Method)
	}
	if q.Get("dryRun") != "" {
		verb = "dry-run " + verb
	}
	return verb + " " + resource
}

// table renders counts as "count  per-workload  rate  mean latency  verb
// resource", largest first.
func table(counts map[string]tally, n int) (string, int) {
	keys := make([]string, 0, len(counts))
	total := 0
	for k, t := range counts {
		keys = append(keys, k)
		total += t.N
	}
	sort.Slice(keys, func(i, j int) bool {
		if counts[keys[i]].N != counts[keys[j]].N {
			return counts[keys[i]].N > counts[keys[j]].N
		}
		return keys[i] < keys[j]
	})
	var b strings.Builder
	fmt.Fprintf(&b, "    %7s %9s %10s %10s  %s\n", "count", "per wl", "req/s", "mean ms", "request")
	for _, k := range keys {
		t := counts[k]
		rate := "-"
		if d := t.Last.Sub(t.First).Seconds(); t.N > 1 && d > 0 {
			rate = fmt.Sprintf("%.1f", float64(t.N-1)/d)
		}
		mean := "-"
		if t.Busy > 0 && !strings.HasPrefix(k, "watch ") {
			mean = fmt.Sprintf("%.1f", float64(t.Busy.Microseconds())/1000/float64(t.N))
		}
		fmt.Fprintf(&b, "    %7d %9.3f %10s %10s  %s\n", t.N, float64(t.N)/float64(n), rate, mean, k)
	}
	fmt.Fprintf(&b, "    %7d %9.3f %10s %10s  total\n", total, float64(total)/float64(n), "", "")
	return b.String(), total
}
