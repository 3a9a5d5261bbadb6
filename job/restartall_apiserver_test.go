package main

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/k8secrets/k8secrets/internal/apitest"
	"github.com/k8secrets/k8secrets/internal/wellknown"
)

// --reload restart-all on a server that offers restart rules: the agent is a
// native sidecar whose rule restarts every container on exactly the agent's
// restart-all exit code, with an emptyDir for its state, and the pod shares
// no PID namespace.
func TestAPIRestartAll(t *testing.T) {
	cl := newCluster(t, never)
	cl.secret("db-creds")
	cl.deployment("web", "web", 1)
	if r := cl.job(injectArgs("app=web", "db-creds", "--reload", "restart-all")...); r.code != 0 {
		t.Fatalf("inject --reload restart-all: exit %d (%v)\n%s", r.code, r.err, r.logs)
	}
	d := cl.waitDeployment("web")
	spec := d.Spec.Template.Spec
	if len(spec.InitContainers) != 1 {
		t.Fatalf("init containers %d; want the agent alone", len(spec.InitContainers))
	}
	a := spec.InitContainers[0]
	if len(a.RestartPolicyRules) != 1 || a.RestartPolicyRules[0].Action != corev1.ContainerRestartRuleActionRestartAllContainers ||
		a.RestartPolicyRules[0].ExitCodes == nil || a.RestartPolicyRules[0].ExitCodes.Operator != corev1.ContainerRestartRuleOnExitCodesOpIn ||
		len(a.RestartPolicyRules[0].ExitCodes.Values) != 1 || a.RestartPolicyRules[0].ExitCodes.Values[0] != wellknown.RestartAllExitCode {
		t.Errorf("agent restartPolicyRules %+v; want RestartAllContainers on exit code %d only", a.RestartPolicyRules, wellknown.RestartAllExitCode)
	}
	state := false
	for _, v := range spec.Volumes {
		state = state || (v.EmptyDir != nil && v.Name == "k8secrets-db-creds-state")
	}
	if !state || !strings.Contains(strings.Join(a.Args, " "), "--state-dir="+wellknown.AgentStateDir) {
		t.Errorf("agent args %q, volumes %+v; want --state-dir on an emptyDir", a.Args, spec.Volumes)
	}
	if spec.ShareProcessNamespace != nil && *spec.ShareProcessNamespace {
		t.Error("shareProcessNamespace is set; restart-all needs no view of the app's processes")
	}
}

// Where the server drops restartPolicyRules (its ContainerRestartRules
// feature is off), an agent exiting with its restart-all code would restart
// only itself, forever: the Job sees the rule missing from the dry-run's
// answer and refuses with exit 4, before any write.
func TestAPIRestartAllRefusedWhereTheServerDropsTheRule(t *testing.T) {
	env := apitest.Start(t, apitest.WithControllerManager(),
		apitest.WithAPIServerArgs("--feature-gates=ContainerRestartRules=false,RestartAllContainersOnContainerExits=false"))
	ns := env.Namespace(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	cl := &cluster{t: t, ctx: ctx, c: env.Client, ns: ns}
	broken := never
	cl.broken.Store(&broken)
	standInKubelet(ctx, t, env.Client, ns, never)
	cl.secret("db-creds")
	cl.deployment("web", "web", 1)
	before := cl.versions()
	r := cl.job(injectArgs("app=web", "db-creds", "--reload", "restart-all")...)
	if r.code != 4 || !strings.Contains(errString(r.err), "dropped the agent's restartPolicyRules") {
		t.Fatalf("inject --reload restart-all where the server drops the rule: exit %d (%v); want 4 saying the server dropped the rule", r.code, r.err)
	}
	if after := cl.versions(); after != before {
		t.Errorf("objects changed although the plan was refused:\nbefore %s\nafter  %s", before, after)
	}
	d, err := env.Client.AppsV1().Deployments(ns).Get(ctx, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Spec.Template.Spec.InitContainers) != 0 {
		t.Errorf("the Deployment has init containers %v; want none", d.Spec.Template.Spec.InitContainers)
	}
}
