package main

// The content key (issue 11) and the verification of pods against a real
// kube-apiserver: the key the Job writes into the agent's environment, kept
// on a rerun and across another manager's apply; and verify's two ways to
// an agent, direct and through the API server's pod proxy, with stand-in
// agents serving /status on this machine's address.

import (
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"

	"github.com/k8secrets/k8secrets/internal/contentid"
	"github.com/k8secrets/k8secrets/job/internal/plan"
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

	// A dry-run rerun shows no key, a rerun changes nothing.
	r = cl.job(injectArgs("app=web", "db-creds", "--dry-run", "-o", "json")...)
	noKey(t, "dry-run rerun", r, key)
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
