package main

// The content key (issue 11) and the verification of pods against a real
// kube-apiserver: the key the Job writes into the agent's environment, kept
// on a rerun and across another manager's apply; and verify's two ways to
// an agent, direct and through the API server's pod proxy, with stand-in
// agents serving /status on this machine's address.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/k8secrets/k8secrets/internal/apitest"
	"github.com/k8secrets/k8secrets/internal/contentid"
	"github.com/k8secrets/k8secrets/job/internal/plan"
	"github.com/k8secrets/k8secrets/job/internal/record"
	"github.com/k8secrets/k8secrets/job/internal/verify"
)

// contentKeyOf is the content key in the Deployment's template.
func contentKeyOf(d *appsv1.Deployment) string { return plan.KeyOf(d.Spec.Template.Spec, "db-creds") }

// ownsKey tells whether manager owns the content key's variable.
func ownsKey(d *appsv1.Deployment, manager string) bool { return owns(d, manager, contentid.KeyEnv) }

// noKey fails the test if key reached r's report, logs or error.
func noKey(t *testing.T, what string, r result, key string) {
	t.Helper()
	if key != "" && (strings.Contains(r.out, key) || strings.Contains(r.logs, key) || strings.Contains(errString(r.err), key)) {
		t.Errorf("%s: the content key reached the report, a log line or the error", what)
	}
}

// Inject writes a fresh content key into the agent's environment, owned by
// the injection's manager; a rerun keeps it and changes nothing; another
// manager's apply of the Deployment leaves it, and so does a rerun after
// that; a dry-run shows it redacted; remove takes it away.
func TestAPIContentKey(t *testing.T) {
	cl := newCluster(t, never)
	cl.secret("db-creds")
	cl.deployment("web", "web", 2)
	cl.deployment("api", "api", 1)

	r := cl.job(injectArgs("app=web", "db-creds")...)
	if r.code != 0 {
		t.Fatalf("inject: exit %d: %v", r.code, r.err)
	}
	d := cl.waitDeployment("web")
	key := contentKeyOf(d)
	if _, err := contentid.Of(key, nil); err != nil {
		t.Fatalf("after inject, the agent's %s is not a content key (%v)", contentid.KeyEnv, err)
	}
	if !ownsKey(d, plan.FieldManager("db-creds")) {
		t.Errorf("the content key is not owned by %s: %+v", plan.FieldManager("db-creds"), d.ManagedFields)
	}
	noKey(t, "inject", r, key)
	for _, p := range cl.pods("web") {
		if p.DeletionTimestamp == nil && plan.KeyOf(p.Spec, "db-creds") != key {
			t.Errorf("pod %s does not carry the template's content key", p.Name)
		}
	}

	// Another workload injected separately gets a key of its own.
	if r := cl.job(injectArgs("app=api", "db-creds")...); r.code != 0 {
		t.Fatalf("inject api: exit %d: %v", r.code, r.err)
	}
	if k := contentKeyOf(cl.waitDeployment("api")); k == "" || k == key {
		t.Errorf("deployment api: content key set %v, same as web's %v; want a fresh one", k != "", k == key)
	}

	// A dry-run of a new intent shows the key redacted; a rerun changes
	// nothing.
	r = cl.job(injectArgs("app=web", "db-creds", "--dry-run", "--agent-image", "k8secrets-agent:test3")...)
	noKey(t, "dry-run", r, key)
	if r.code != 0 || !strings.Contains(r.out, "+    image: k8secrets-agent:test3") || !strings.Contains(r.out, "value: (redacted)") {
		out := r.out
		if strings.Contains(out, key) {
			out = "(withheld: it holds the key)"
		}
		t.Errorf("dry-run with another agent image: exit %d (%v); want a diff with the key redacted:\n%s", r.code, r.err, out)
	}
	rs, gen, hash := cl.replicaSets(), d.Generation, d.Spec.Template.Annotations[plan.HashAnnotation("db-creds")]
	r = cl.job(injectArgs("app=web", "db-creds")...)
	if r.code != 0 || !strings.Contains(r.out, "unchanged") {
		t.Fatalf("rerun: exit %d (%v); report:\n%s", r.code, r.err, r.out)
	}
	d = cl.get("web")
	if cl.replicaSets() != rs || d.Generation != gen || contentKeyOf(d) != key || d.Spec.Template.Annotations[plan.HashAnnotation("db-creds")] != hash {
		t.Errorf("rerun: replicasets %d -> %d, generation %d -> %d, same key %v, same hash %v; want no change",
			rs, cl.replicaSets(), gen, d.Generation, contentKeyOf(d) == key, d.Spec.Template.Annotations[plan.HashAnnotation("db-creds")] == hash)
	}

	// A CD system applies its own manifest of web, without the agent.
	cl.cdApply("web", "web", 2)
	d = cl.waitDeployment("web")
	if contentKeyOf(d) != key || !ownsKey(d, plan.FieldManager("db-creds")) {
		t.Errorf("after another manager's apply: same key %v, owned by the injection %v; want both", contentKeyOf(d) == key, ownsKey(d, plan.FieldManager("db-creds")))
	}
	rs, gen = cl.replicaSets(), d.Generation
	r = cl.job(injectArgs("app=web", "db-creds")...)
	if r.code != 0 || !strings.Contains(r.out, "unchanged") {
		t.Fatalf("rerun after the CD's apply: exit %d (%v); report:\n%s", r.code, r.err, r.out)
	}
	if d = cl.get("web"); cl.replicaSets() != rs || d.Generation != gen || contentKeyOf(d) != key {
		t.Errorf("rerun after the CD's apply: replicasets %d -> %d, generation %d -> %d, same key %v; want no change",
			rs, cl.replicaSets(), gen, d.Generation, contentKeyOf(d) == key)
	}

	// A new intent (another agent image) keeps the key.
	r = cl.job(injectArgs("app=web", "db-creds", "--agent-image", "k8secrets-agent:test2")...)
	if r.code != 0 {
		t.Fatalf("reinject with another image: exit %d: %v", r.code, r.err)
	}
	if d = cl.waitDeployment("web"); contentKeyOf(d) != key || d.Generation == gen {
		t.Errorf("reinject with another image: generation %d -> %d, same key %v; want a rollout keeping the key", gen, d.Generation, contentKeyOf(d) == key)
	}

	if r := cl.job("remove", "-l", "app=web", "--secret", "db-creds", "--timeout", "30s"); r.code != 0 {
		t.Fatalf("remove: exit %d: %v", r.code, r.err)
	}
	if d = cl.waitDeployment("web"); contentKeyOf(d) != "" || ownsKey(d, plan.FieldManager("db-creds")) {
		t.Errorf("after remove the content key is still in the template")
	}
}

// hostIP is an address of this machine that the API server may proxy to:
// not loopback or link-local, which its pod proxy refuses.
func hostIP(t *testing.T) string {
	t.Helper()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil && !n.IP.IsLoopback() && !n.IP.IsLinkLocalUnicast() {
			return n.IP.String()
		}
	}
	t.Skip("no non-loopback IPv4 address to stand in for a pod IP")
	return ""
}

// standInAgent serves GET /status on ip as the agent of a pod would: what
// it answers is decided, at each request, by answer (nil: 404, an agent
// older than /status).
func standInAgent(t *testing.T, ip string, answer func() (loaded, seen, state, reason string)) int32 {
	t.Helper()
	l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	if answer != nil {
		mux.HandleFunc("/status", func(w http.ResponseWriter, _ *http.Request) {
			loaded, seen, state, reason := answer()
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(map[string]any{"agent": "stand-in", "keyed": true, "directories": []map[string]string{{
				"path": "/var/run/secrets/k8secrets/db-creds", "loaded": loaded, "seen": seen, "state": state, "error": reason}}})
		})
	}
	s := &http.Server{Handler: mux}
	go func() { _ = s.Serve(l) }()
	t.Cleanup(func() { _ = s.Close() })
	return int32(l.Addr().(*net.TCPAddr).Port)
}

// agentPod creates a running pod that mounts db-creds, with the agent of
// its injection (key in its env; none if "") listening on ip:port, and
// marks it Running at ip as a kubelet would.
func (cl *cluster) agentPod(name, ip string, port int32, key string) *corev1.Pod {
	cl.t.Helper()
	agent := corev1.Container{Name: plan.AgentName("db-creds"), Image: "k8secrets-agent:test",
		Args: []string{"--watch=/var/run/secrets/k8secrets/db-creds", "--reload=signal:SIGHUP", fmt.Sprintf("--listen=:%d", port)}}
	if key != "" {
		agent.Env = []corev1.EnvVar{{Name: contentid.KeyEnv, Value: key}}
	}
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app": "agents", standInLabel: "true"}},
		Spec: corev1.PodSpec{
			Containers: []corev1.Container{{Name: "app", Image: "web:1"}, agent},
			Volumes: []corev1.Volume{{Name: "k8secrets-db-creds", VolumeSource: corev1.VolumeSource{
				Secret: &corev1.SecretVolumeSource{SecretName: "db-creds"}}}},
		}}
	p, err := cl.c.CoreV1().Pods(cl.ns).Create(cl.ctx, p, metav1.CreateOptions{})
	if err != nil {
		cl.t.Fatal(err)
	}
	now := metav1.Now()
	p.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}, StartTime: &now,
		Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now}}}
	if p, err = cl.c.CoreV1().Pods(cl.ns).UpdateStatus(cl.ctx, p, metav1.UpdateOptions{}); err != nil {
		cl.t.Fatal(err)
	}
	return p
}

// standInLabel marks the pods whose status the test sets itself: the
// stand-in kubelet leaves them alone.
const standInLabel = "k8secrets.test/agent"

func agentPods(p *corev1.Pod) bool { return p.Labels[standInLabel] == "true" }

// contentOf is the content id of the Secret db-creds under key, now.
func (cl *cluster) contentOf(key string) string {
	cl.t.Helper()
	s, err := cl.c.CoreV1().Secrets(cl.ns).Get(cl.ctx, "db-creds", metav1.GetOptions{})
	if err != nil {
		cl.t.Fatal(err)
	}
	id, err := contentid.Of(key, s.Data)
	if err != nil {
		cl.t.Fatal(err)
	}
	return id
}

func newContentKey(t *testing.T) string {
	t.Helper()
	k, err := contentid.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// statesOf maps pod name to "state: reason".
func statesOf(r verify.Report) map[string]string {
	out := map[string]string{}
	for _, p := range r.Pods {
		out[p.Name] = p.State + ": " + p.Reason
	}
	return out
}

// verify asks the stand-in agents through the API server's pod proxy and
// directly, and tells each state; without pods/proxy get, the proxy way
// says which Role is missing, and a wait gives up at once.
func TestAPIVerifyProxyAndDirect(t *testing.T) {
	cl := newCluster(t, agentPods)
	cl.secret("db-creds")
	ip := hostIP(t)
	key := newContentKey(t)
	cur := cl.contentOf(key)
	old, _ := contentid.Of(key, map[string][]byte{"password": []byte("old")})
	cl.agentPod("current", ip, standInAgent(t, ip, func() (string, string, string, string) { return cur, cur, "loaded", "" }), key)
	cl.agentPod("stale", ip, standInAgent(t, ip, func() (string, string, string, string) { return old, old, "loaded", "" }), key)
	cl.agentPod("failing", ip, standInAgent(t, ip, func() (string, string, string, string) {
		return old, cur, "failed", "signal app (pid 7): operation not permitted"
	}), key)
	cl.agentPod("refusing", ip, standInAgent(t, ip, func() (string, string, string, string) {
		return old, cur, "refused", "tls.crt not valid before 2027-01-01T00:00:00Z"
	}), key)
	cl.agentPod("old-agent", ip, standInAgent(t, ip, nil), key)
	cl.agentPod("no-key", ip, standInAgent(t, ip, nil), "")
	cl.agentPod("down", ip, closedPort(t, ip), key)
	want := map[string]string{
		"current": verify.Current, "stale": verify.Stale, "failing": verify.Failed, "refusing": verify.Refused,
		"old-agent": verify.Unknown, "no-key": verify.Unknown, "down": verify.Unreachable,
	}
	wantReason := map[string]string{
		"stale": "kubelet has not written", "failing": "operation not permitted", "refusing": "not valid before",
		"old-agent": "no /status (404)", "no-key": contentid.KeyEnv, "down": "connection refused",
	}
	for _, via := range []string{verify.Proxy, verify.Direct} {
		r, err := verify.Check(cl.ctx, cl.c, verify.Options{Namespace: cl.ns, Secret: "db-creds", Via: via})
		if err != nil {
			t.Fatalf("Check via %s: %v", via, err)
		}
		got := statesOf(r)
		if r.Via != via || r.Total != len(want) || r.Current != 1 {
			t.Errorf("Check via %s = via %s, %d of %d current; want via %s, 1 of %d", via, r.Via, r.Current, r.Total, via, len(want))
		}
		for name, state := range want {
			if !strings.HasPrefix(got[name], state+": ") || !strings.Contains(got[name], wantReason[name]) {
				t.Errorf("Check via %s: pod %s is %q; want %s (%s)", via, name, got[name], state, wantReason[name])
			}
		}
		b, _ := json.Marshal(r)
		if strings.Contains(string(b), key) || strings.Contains(string(b), secretValue) {
			t.Fatal("the report holds the content key or the Secret's value")
		}
	}

	// Without pods/proxy get: each pod says which Role is missing, and a
	// wait ends at once rather than at its deadline.
	noProxy := cl.bindRole(apitest.Shared(t), "../manifests/verify/role.yaml", "no-proxy", func(r *rbacv1.Role) {
		r.Rules = []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"secrets"}, Verbs: []string{"get"}, ResourceNames: []string{"db-creds"}},
			{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"list"}},
		}
	}, func(ctx context.Context, c kubernetes.Interface) error {
		_, err := c.CoreV1().Pods(cl.ns).List(ctx, metav1.ListOptions{})
		return err
	})
	ctx, cancel := context.WithTimeout(cl.ctx, time.Minute)
	defer cancel()
	start := time.Now()
	r, err := verify.Wait(ctx, noProxy, verify.Options{Namespace: cl.ns, Secret: "db-creds", Via: verify.Proxy})
	if !errors.Is(err, verify.ErrCannotVerify) || !strings.Contains(err.Error(), "k8secrets-verify") || ctx.Err() != nil {
		t.Errorf("Wait without pods/proxy = %v after %s; want ErrCannotVerify naming the Role k8secrets-verify, at once", err, time.Since(start))
	}
	for name, s := range statesOf(r) {
		if want[name] != verify.Unknown && !strings.Contains(s, "pods/proxy get") {
			t.Errorf("without pods/proxy, pod %s is %q; want it to name pods/proxy get", name, s)
		}
	}
}

// closedPort is a port on ip where nothing listens.
func closedPort(t *testing.T, ip string) int32 {
	t.Helper()
	l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	return int32(l.Addr().(*net.TCPAddr).Port)
}

// loadsWhenPoked is a stand-in agent whose app loads the Secret's current
// content once its pod has been refreshed (the kubelet's rewrite, then the
// reload), and not before.
func (cl *cluster) loadsWhenPoked(name *string, key, old string) func() (string, string, string, string) {
	return func() (string, string, string, string) {
		p, err := cl.c.CoreV1().Pods(cl.ns).Get(cl.ctx, *name, metav1.GetOptions{})
		if err != nil || p.Annotations["k8secrets.io/refreshed-at"] == "" {
			return old, old, "loaded", ""
		}
		cur := cl.contentOf(key)
		return cur, cur, "loaded", ""
	}
}

// refresh --wait through the pod proxy: exit 0 once every pod has loaded the
// current content (which they do only once poked), unknown pods listed but
// not waited for; exit 9 naming the pod whose reload fails; --wait=false
// does not wait.
func TestAPIRefreshWait(t *testing.T) {
	cl := newCluster(t, agentPods)
	cl.secret("db-creds")
	ip := hostIP(t)
	key := newContentKey(t)
	old, _ := contentid.Of(key, map[string][]byte{"password": []byte("old")})
	names := []string{"a", "b"}
	for i := range names {
		cl.agentPod(names[i], ip, standInAgent(t, ip, cl.loadsWhenPoked(&names[i], key, old)), key)
	}
	cl.agentPod("old-agent", ip, standInAgent(t, ip, nil), key)

	r := cl.job("refresh", "--secret", "db-creds", "--verify-via", "proxy", "--timeout", "60s", "-o", "json")
	if r.code != 0 {
		t.Fatalf("refresh --wait: exit %d (%v)\n%s", r.code, r.err, r.out)
	}
	noKey(t, "refresh --wait", r, key)
	for _, n := range names {
		p, _ := cl.c.CoreV1().Pods(cl.ns).Get(cl.ctx, n, metav1.GetOptions{})
		if p.Annotations["k8secrets.io/refreshed-at"] == "" {
			t.Errorf("pod %s was not refreshed", n)
		}
	}
	var rep record.Report
	if err := json.Unmarshal([]byte(r.out), &rep); err != nil {
		t.Fatalf("-o json: %v\n%s", err, r.out)
	}
	if v := rep.Verification; v == nil || v.Via != verify.Proxy || v.Current != 2 || v.Total != 3 ||
		!strings.Contains(strings.Join(rep.Warnings, "\n"), "old-agent (its agent has no /status (404)") {
		t.Errorf("refresh --wait report: verification %+v, warnings %q; want 2 of 3 current via proxy and old-agent listed unknown", v, rep.Warnings)
	}

	// One pod whose reload fails.
	cl.agentPod("failing", ip, standInAgent(t, ip, func() (string, string, string, string) {
		return old, cl.contentOf(key), "failed", "exec /reload.sh: exit status 1"
	}), key)
	r = cl.job("refresh", "--secret", "db-creds", "--verify-via", "proxy", "--timeout", "3s")
	if r.code != 9 || !strings.Contains(errString(r.err), "failing (failed: reload failed: exec /reload.sh: exit status 1)") ||
		!strings.Contains(errString(r.err), "via proxy") || strings.Contains(errString(r.err), "a (") {
		t.Errorf("refresh --wait, one reload failing: exit %d (%v); want 9 naming pod failing, its error and the way (proxy), not the others", r.code, r.err)
	}
	if p, _ := cl.c.CoreV1().Pods(cl.ns).Get(cl.ctx, "failing", metav1.GetOptions{}); p.Annotations["k8secrets.io/refreshed-at"] == "" {
		t.Errorf("pod failing was not refreshed")
	}
	if r := cl.job("refresh", "--secret", "db-creds", "--wait=false"); r.code != 0 || r.out == "" || strings.Contains(r.out, "run the current content") {
		t.Errorf("refresh --wait=false: exit %d (%v); want 0 with no verification\n%s", r.code, r.err, r.out)
	}
}

// allowed asks whether c may verb group/resource (named name, if set) in ns.
func allowed(ctx context.Context, c kubernetes.Interface, ns string, r rbacv1.PolicyRule) error {
	attrs := &authorizationv1.ResourceAttributes{Namespace: ns, Verb: r.Verbs[0], Group: r.APIGroups[0]}
	attrs.Resource, attrs.Subresource, _ = strings.Cut(r.Resources[0], "/")
	if len(r.ResourceNames) > 0 {
		attrs.Name = r.ResourceNames[0]
	}
	a, err := c.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, &authorizationv1.SelfSubjectAccessReview{
		Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: attrs}}, metav1.CreateOptions{})
	if err == nil && !a.Status.Allowed {
		err = fmt.Errorf("not yet")
	}
	return err
}

// The verify Role, beside the refresh Role, is enough for refresh --wait
// through the pod proxy from outside the cluster, and each of its rules is
// needed.
func TestAPIVerifyRoleEnoughAndNoMore(t *testing.T) {
	shipped := loadRole(t, "../manifests/verify/role.yaml")
	shipped.Rules[0].ResourceNames = []string{"db-creds"} // as an overlay does
	try := func(t *testing.T, role rbacv1.Role, user string) error {
		cl := newCluster(t, agentPods)
		cl.secret("db-creds")
		ip := hostIP(t)
		key := newContentKey(t)
		old, _ := contentid.Of(key, map[string][]byte{"password": []byte("old")})
		names := []string{"a", "b"}
		for i := range names {
			cl.agentPod(names[i], ip, standInAgent(t, ip, cl.loadsWhenPoked(&names[i], key, old)), key)
		}
		env := apitest.Shared(t)
		cl.bindRole(env, "../manifests/refresh/role.yaml", user, nil, func(ctx context.Context, c kubernetes.Interface) error {
			_, err := c.CoreV1().Pods(cl.ns).List(ctx, metav1.ListOptions{})
			return err
		})
		c := cl.bindRole(env, "../manifests/verify/role.yaml", user, func(r *rbacv1.Role) { *r = role }, func(ctx context.Context, c kubernetes.Interface) error {
			for _, r := range role.Rules {
				if err := allowed(ctx, c, cl.ns, r); err != nil {
					return err
				}
			}
			return nil
		})
		r := cl.jobAs(cl.ctx, c, "refresh", "--secret", "db-creds", "--verify-via", "proxy", "--timeout", "30s", "-o", "json")
		var rep record.Report
		_ = json.Unmarshal([]byte(r.out), &rep)
		if r.code != 0 || rep.Verification == nil || rep.Verification.Current != 2 {
			return fmt.Errorf("exit %d (%v), report:\n%s", r.code, r.err, r.out)
		}
		return nil
	}
	t.Run("shipped", func(t *testing.T) {
		if err := try(t, shipped, "ci-pipeline"); err != nil {
			t.Errorf("refresh --wait under the refresh and verify Roles: %v", err)
		}
	})
	for i, rule := range shipped.Rules {
		name := rule.Resources[0] + ":" + strings.Join(rule.Verbs, "+")
		t.Run("without "+name, func(t *testing.T) {
			m := *shipped.DeepCopy()
			m.Rules = append(m.Rules[:i:i], m.Rules[i+1:]...)
			err := try(t, m, fmt.Sprintf("ci-pipeline-%d", i))
			if err == nil {
				t.Errorf("refresh --wait passes without %s: the verify Role grants more than it needs", name)
			}
			t.Logf("without %s: %.300v", name, err)
		})
	}
}
