//go:build e2e

package job

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The runs that must change nothing: bad input (2), a missing Secret (3),
// and no running pod matching the selector (0). Every object the Job could
// touch keeps its resourceVersion, and no Lease is left behind.
func TestRunsThatChangeNothing(t *testing.T) {
	s := setup(t)
	t.Parallel()
	for _, tc := range []struct {
		name     string
		selector string
		secret   string
		want     int
		stderr   string // what the error must name
	}{
		{name: "invalid selector", selector: "app in (web", secret: "db-creds", want: 2, stderr: "selector"},
		{name: "invalid secret name", selector: "app=web", secret: "Not_A_Name", want: 2, stderr: "Not_A_Name"},
		{name: "secret not found", selector: "app=web", secret: "missing", want: 3, stderr: "missing"},
		{name: "no matching pods", selector: "app=nothing-runs-here", secret: "db-creds", want: 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := testContext(t, 4*time.Minute)
			ns := s.Namespace(t)
			value := s.createSecret(ctx, t, ns, "db-creds")
			s.deployment(ctx, t, ns, "web", "web", 1)
			before := s.stableVersions(ctx, t, ns)

			r := s.job(ctx, t, "", ns, [][]byte{value}, s.injectArgs(tc.selector, tc.secret, "--timeout", "30s")...)
			if r.code != tc.want {
				t.Fatalf("inject -l %q --secret %s: %s\nwant exit %d", tc.selector, tc.secret, r, tc.want)
			}
			if !strings.Contains(r.stderr, tc.stderr) {
				t.Errorf("inject -l %q --secret %s: stderr does not name %q:\n%s", tc.selector, tc.secret, tc.stderr, r.stderr)
			}
			if after := s.versions(ctx, t, ns); after != before {
				t.Errorf("objects changed:\nbefore %s\nafter  %s", before, after)
			}
		})
	}
}

// Success on every kind: every pod of the matched Deployment, StatefulSet
// and DaemonSet mounts the Secret at the default path and reads its
// content. Then a rerun is a no-op (no new ReplicaSet or revision, no pod
// replaced or restarted), status lists the injections, and remove restores
// the original pod templates exactly.
func TestInjectRerunStatusRemove(t *testing.T) {
	s := setup(t)
	t.Parallel()
	ctx := testContext(t, 8*time.Minute)
	ns := s.Namespace(t)
	value := s.createSecret(ctx, t, ns, "db-creds")
	other := s.createSecret(ctx, t, ns, "unrelated")
	secrets := [][]byte{value, other}
	origDeploy := s.deployment(ctx, t, ns, "web", "web", 2)
	origSts := s.statefulSet(ctx, t, ns, "db", "web", 2, appsv1.RollingUpdateStatefulSetStrategyType)
	origDs := s.daemonSet(ctx, t, ns, "agent", "web")
	// Not matched: must not be touched.
	bystander := s.deployment(ctx, t, ns, "bystander", "other", 1)
	nodes := int(origDs.Status.DesiredNumberScheduled)

	r := s.job(ctx, t, "", ns, secrets, s.injectArgs("app=web", "db-creds", "--timeout", "2m")...)
	if r.code != 0 {
		t.Fatalf("inject: %s", r)
	}
	pods := s.settledPods(ctx, t, ns, "app=web", 2+2+nodes, "db-creds", true)
	owners := map[string]int{}
	for _, p := range pods {
		if ref := metav1.GetControllerOf(&p); ref != nil {
			owners[ref.Kind]++
		}
	}
	if owners["ReplicaSet"] != 2 || owners["StatefulSet"] != 2 || owners["DaemonSet"] != nodes {
		t.Errorf("injected pods by owner kind: %v; want 2 of the Deployment's ReplicaSet, 2 of the StatefulSet, %d of the DaemonSet", owners, nodes)
	}
	s.checkSecretFile(ctx, t, pods, "db-creds", value)
	for _, p := range pods {
		checkAgent(t, &p, "db-creds", 1000)
	}
	if b, err := s.Client.AppsV1().Deployments(ns).Get(ctx, "bystander", metav1.GetOptions{}); err != nil || b.ResourceVersion != bystander.ResourceVersion {
		t.Errorf("the unmatched deployment changed (or: %v)", err)
	}
	for _, kind := range []string{"deployment/web", "statefulset/db", "daemonset/agent"} {
		if l := s.workloadLabels(ctx, t, ns, kind); l["k8secrets.io/injected"] != "true" {
			t.Errorf("%s labels %v; want k8secrets.io/injected=true", kind, l)
		}
	}

	// Rerun: nothing written, nothing restarted.
	before := s.stableVersions(ctx, t, ns)
	restarts := restartCounts(pods)
	r = s.job(ctx, t, "", ns, secrets, s.injectArgs("app=web", "db-creds", "--timeout", "2m")...)
	if r.code != 0 {
		t.Fatalf("rerun: %s", r)
	}
	if after := s.versions(ctx, t, ns); after != before {
		t.Errorf("the rerun changed objects (a new ReplicaSet, revision or pod?):\nbefore %s\nafter  %s", before, after)
	}
	again := s.livePods(ctx, t, ns, "app=web")
	if got := restartCounts(again); got != restarts {
		t.Errorf("pods and restarts after the rerun: %s; want unchanged %s", got, restarts)
	}

	// status names every injected workload and the Secret.
	r = s.job(ctx, t, "", ns, secrets, "status")
	if r.code != 0 {
		t.Fatalf("status: %s", r)
	}
	for _, want := range []string{"web", "db", "agent", "db-creds", "Deployment", "StatefulSet", "DaemonSet"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("status does not list %q:\n%s", want, r.stdout)
		}
	}
	if strings.Contains(r.stdout, "bystander") {
		t.Errorf("status lists the workload that was never injected:\n%s", r.stdout)
	}

	// remove: the pod templates are the originals again, the pods too.
	r = s.job(ctx, t, "", ns, secrets, "remove", "-l", "app=web", "--secret", "db-creds", "--timeout", "2m")
	if r.code != 0 {
		t.Fatalf("remove: %s", r)
	}
	d, err := s.Client.AppsV1().Deployments(ns).Get(ctx, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !equality.Semantic.DeepEqual(d.Spec.Template, origDeploy.Spec.Template) {
		t.Errorf("remove left deployment/web's template\n%+v\nwant the original\n%+v", d.Spec.Template, origDeploy.Spec.Template)
	}
	sts, err := s.Client.AppsV1().StatefulSets(ns).Get(ctx, "db", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !equality.Semantic.DeepEqual(sts.Spec.Template, origSts.Spec.Template) {
		t.Errorf("remove left statefulset/db's template\n%+v\nwant the original\n%+v", sts.Spec.Template, origSts.Spec.Template)
	}
	ds, err := s.Client.AppsV1().DaemonSets(ns).Get(ctx, "agent", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !equality.Semantic.DeepEqual(ds.Spec.Template, origDs.Spec.Template) {
		t.Errorf("remove left daemonset/agent's template\n%+v\nwant the original\n%+v", ds.Spec.Template, origDs.Spec.Template)
	}
	for _, kind := range []string{"deployment/web", "statefulset/db", "daemonset/agent"} {
		if l := s.workloadLabels(ctx, t, ns, kind); l["k8secrets.io/injected"] != "" {
			t.Errorf("%s still labelled injected after remove: %v", kind, l)
		}
	}
	s.settledPods(ctx, t, ns, "app=web", 2+2+nodes, "db-creds", false)
}

// workloadLabels returns the labels of a workload named "kind/name".
func (s *suite) workloadLabels(ctx context.Context, t *testing.T, ns, kind string) map[string]string {
	t.Helper()
	apps := s.Client.AppsV1()
	kindName := strings.SplitN(kind, "/", 2)
	var m metav1.Object
	var err error
	switch kindName[0] {
	case "deployment":
		m, err = apps.Deployments(ns).Get(ctx, kindName[1], metav1.GetOptions{})
	case "statefulset":
		m, err = apps.StatefulSets(ns).Get(ctx, kindName[1], metav1.GetOptions{})
	case "daemonset":
		m, err = apps.DaemonSets(ns).Get(ctx, kindName[1], metav1.GetOptions{})
	}
	if err != nil {
		t.Fatalf("get %s: %v", kind, err)
	}
	return m.GetLabels()
}

// restartCounts describes each pod by name, UID and its containers'
// restarts: equal strings mean no pod was replaced or restarted.
func restartCounts(pods []corev1.Pod) string {
	var b strings.Builder
	for _, p := range pods {
		fmt.Fprintf(&b, "%s(%s)", p.Name, p.UID)
		for _, cs := range append(append([]corev1.ContainerStatus{}, p.Status.InitContainerStatuses...), p.Status.ContainerStatuses...) {
			fmt.Fprintf(&b, " %s:%d", cs.Name, cs.RestartCount)
		}
		b.WriteString("; ")
	}
	return b.String()
}

// checkAgent asserts the pod runs the reload agent for secret as a native
// sidecar (an init container that keeps running), as the app's user uid,
// watching the mount.
func checkAgent(t *testing.T, p *corev1.Pod, secret string, uid int64) {
	t.Helper()
	name := "k8secrets-agent-" + secret
	var agent *corev1.Container
	for i := range p.Spec.InitContainers {
		if p.Spec.InitContainers[i].Name == name {
			agent = &p.Spec.InitContainers[i]
		}
	}
	if agent == nil {
		t.Errorf("pod %s has no init container %s", p.Name, name)
		return
	}
	if agent.RestartPolicy == nil || *agent.RestartPolicy != corev1.ContainerRestartPolicyAlways {
		t.Errorf("pod %s: %s is not a native sidecar (restartPolicy %v)", p.Name, name, agent.RestartPolicy)
	}
	if sc := agent.SecurityContext; sc == nil || sc.RunAsUser == nil || *sc.RunAsUser != uid {
		t.Errorf("pod %s: %s does not run as the app's user %d (securityContext %+v)", p.Name, name, uid, sc)
	}
	if !strings.Contains(strings.Join(agent.Args, " "), "--watch="+mountDir+"/"+secret) {
		t.Errorf("pod %s: %s args %q do not watch %s/%s", p.Name, name, agent.Args, mountDir, secret)
	}
	for _, cs := range p.Status.InitContainerStatuses {
		if cs.Name == name && (cs.State.Running == nil || cs.Started == nil || !*cs.Started) {
			t.Errorf("pod %s: %s is not running (state %+v)", p.Name, name, cs.State)
		}
	}
}
