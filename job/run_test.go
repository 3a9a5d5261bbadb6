package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/version"
	fakediscovery "k8s.io/client-go/discovery/fake"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/utils/ptr"

	"github.com/k8secrets/k8secrets/job/internal/config"
	"github.com/k8secrets/k8secrets/job/internal/plan"
	"github.com/k8secrets/k8secrets/job/internal/record"
)

const secretValue = "s3cr3t-value-never-logged"

func secretObj(name string, typ corev1.SecretType) *corev1.Secret {
	return &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "shop"}, Type: typ,
		Data: map[string][]byte{"password": []byte(secretValue)}}
}

func webDeployment(name string) (*appsv1.Deployment, *appsv1.ReplicaSet, *corev1.Pod) {
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "shop", UID: "d-" + "uid"},
		Spec: appsv1.DeploymentSpec{Replicas: ptr.To(int32(1)), Template: corev1.PodTemplateSpec{
			ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": name}},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "web:1",
				SecurityContext: &corev1.SecurityContext{RunAsUser: ptr.To(int64(1000))}}}},
		}},
	}
	ctl := func(kind, n string) []metav1.OwnerReference {
		return []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: kind, Name: n, Controller: ptr.To(true)}}
	}
	rs := &appsv1.ReplicaSet{ObjectMeta: metav1.ObjectMeta{Name: name + "-1", Namespace: "shop", OwnerReferences: ctl("Deployment", name)}}
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name + "-1-a", Namespace: "shop", Labels: map[string]string{"app": name}, OwnerReferences: ctl("ReplicaSet", name+"-1")},
		Status: corev1.PodStatus{Phase: corev1.PodRunning}}
	return d, rs, p
}

type result struct {
	code   int
	err    error
	out    string // report
	logs   string
	client *fake.Clientset
}

// runJob parses args as the command line would and runs them against a fake
// cluster holding objs. A "controller" goroutine marks Deployments rolled out
// unless stuck is set.
func runJob(t *testing.T, args []string, stuck bool, objs ...runtime.Object) result {
	t.Helper()
	return runJobWith(t, args, stuck, nil, objs...)
}

// runJobWith is runJob with a hook to add reactors before the run.
func runJobWith(t *testing.T, args []string, stuck bool, hook func(*fake.Clientset), objs ...runtime.Object) result {
	t.Helper()
	client := newFake(objs...)
	if hook != nil {
		hook(client)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	go rollOutDeployments(ctx, client, stuck)
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	cfg, err := config.Parse(args, func(string) (string, bool) { return "", false }, io.Discard)
	var out bytes.Buffer
	if err == nil {
		var rep record.Report
		rep, err = run(ctx, cfg, client, "shop", log)
		if werr := rep.Write(&out, cfg.Output); werr != nil {
			t.Fatal(werr)
		}
	}
	res := result{code: exitCode(err), err: err, out: out.String(), logs: logs.String(), client: client}
	for _, s := range []string{res.out, res.logs, errString(err)} {
		if strings.Contains(s, secretValue) {
			t.Fatalf("a Secret value reached the output, a log line or an error")
		}
	}
	return res
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// rollOutDeployments stands in for the deployment controller: it reports
// every Deployment as fully rolled out, except, when stuck, those whose pod
// template carries a volume (as if the injected pods never became ready).
func rollOutDeployments(ctx context.Context, c *fake.Clientset, stuck bool) {
	w, err := c.AppsV1().Deployments("shop").Watch(ctx, metav1.ListOptions{})
	if err != nil {
		return
	}
	defer w.Stop()
	for ev := range w.ResultChan() {
		d, ok := ev.Object.(*appsv1.Deployment)
		if !ok || d.Status.UpdatedReplicas == *d.Spec.Replicas && d.Status.ObservedGeneration == d.Generation {
			continue
		}
		if stuck && len(d.Spec.Template.Spec.Volumes) > 0 {
			d = d.DeepCopy()
			d.Status = appsv1.DeploymentStatus{ObservedGeneration: d.Generation, Replicas: *d.Spec.Replicas + 1, UpdatedReplicas: 1}
			_, _ = c.AppsV1().Deployments("shop").UpdateStatus(ctx, d, metav1.UpdateOptions{})
			continue
		}
		d = d.DeepCopy()
		d.Status = appsv1.DeploymentStatus{ObservedGeneration: d.Generation, Replicas: *d.Spec.Replicas,
			UpdatedReplicas: *d.Spec.Replicas, AvailableReplicas: *d.Spec.Replicas, ReadyReplicas: *d.Spec.Replicas}
		_, _ = c.AppsV1().Deployments("shop").UpdateStatus(ctx, d, metav1.UpdateOptions{})
	}
}

func inject(extra ...string) []string {
	// The fake has no pods to hold for --healthy-for: no hold.
	return append([]string{"inject", "-l", "app=web", "--secret", "db-creds", "--agent-image", "agent:test", "--healthy-for", "0s"}, extra...)
}

func writes(c *fake.Clientset) []k8stesting.Action {
	var out []k8stesting.Action
	for _, a := range c.Actions() {
		switch a.GetVerb() {
		case "get", "list", "watch":
		default:
			out = append(out, a)
		}
	}
	return out
}

func TestExitCodes(t *testing.T) {
	d, rs, p := webDeployment("web")
	for _, tc := range []struct {
		name   string
		args   []string
		objs   []runtime.Object
		stuck  bool
		code   int
		want   string
		writes bool // whether the cluster may be changed
	}{
		{"bad selector", []string{"inject", "-l", "app in (", "--secret", "db-creds"}, nil, false, 2, "--selector", false},
		{"secret not found", inject(), []runtime.Object{d, rs, p}, false, 3, "secret shop/db-creds not found", false},
		{"service account token", inject(), []runtime.Object{secretObj("db-creds", corev1.SecretTypeServiceAccountToken), d, rs, p}, false, 3, "service-account", false},
		{"no running pods", []string{"inject", "-l", "app=nothing", "--secret", "db-creds"}, []runtime.Object{secretObj("db-creds", corev1.SecretTypeOpaque), d, rs, p}, false, 0, "no running pods match", false},
		{"conflict", inject("--container", "nginx"), []runtime.Object{secretObj("db-creds", corev1.SecretTypeOpaque), d, rs, p}, false, 4, "has no container nginx", false},
		{"success", inject(), []runtime.Object{secretObj("db-creds", corev1.SecretTypeOpaque), d, rs, p}, false, 0, "injected", true},
		{"rollout times out", inject("--timeout", "1s"), []runtime.Object{secretObj("db-creds", corev1.SecretTypeOpaque), d, rs, p}, true, 5, "rolled back", true},
		{"dry-run", inject("--dry-run"), []runtime.Object{secretObj("db-creds", corev1.SecretTypeOpaque), d, rs, p}, false, 0, "would change", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := runJob(t, tc.args, tc.stuck, tc.objs...)
			if r.code != tc.code {
				t.Fatalf("k8secrets-job %s: exit %d (%v); want %d", strings.Join(tc.args, " "), r.code, r.err, tc.code)
			}
			if !strings.Contains(r.out+errString(r.err), tc.want) {
				t.Errorf("k8secrets-job %s: report %q, error %v; want %q", strings.Join(tc.args, " "), r.out, r.err, tc.want)
			}
			if r.client == nil {
				return
			}
			var realWrites int
			for _, a := range writes(r.client) {
				if pa, ok := a.(k8stesting.PatchAction); ok && a.GetVerb() == "patch" && isDryRun(pa) {
					continue
				}
				if ca, ok := a.(k8stesting.CreateActionImpl); ok && isDryRunCreate(ca) {
					continue
				}
				if a.GetResource().Resource == "deployments" && a.GetSubresource() == "status" {
					continue // the stand-in controller
				}
				if a.GetResource().Resource == "leases" {
					continue // the run's own lock, taken before planning; deleted below
				}
				realWrites++
			}
			if !tc.writes && realWrites > 0 {
				t.Errorf("k8secrets-job %s changed the cluster: %v", strings.Join(tc.args, " "), writes(r.client))
			}
			if l, err := r.client.CoordinationV1().Leases("shop").List(context.Background(), metav1.ListOptions{}); err != nil || len(l.Items) > 0 {
				t.Errorf("k8secrets-job %s left leases behind: %v (%v)", strings.Join(tc.args, " "), l, err)
			}
		})
	}
}

func isDryRun(pa k8stesting.PatchAction) bool {
	type dryRunner interface{ GetPatchOptions() metav1.PatchOptions }
	if o, ok := pa.(dryRunner); ok {
		return len(o.GetPatchOptions().DryRun) == 1 && o.GetPatchOptions().DryRun[0] == metav1.DryRunAll
	}
	return false
}

func isDryRunCreate(ca k8stesting.CreateActionImpl) bool {
	return len(ca.CreateOptions.DryRun) == 1 && ca.CreateOptions.DryRun[0] == metav1.DryRunAll
}

func TestInjectDryRunsEveryChangeBeforeApplying(t *testing.T) {
	d1, rs1, p1 := webDeployment("web")
	d2, rs2, p2 := webDeployment("web2")
	p2.Labels["app"] = "web"
	r := runJob(t, inject(), false, secretObj("db-creds", corev1.SecretTypeOpaque), d1, rs1, p1, d2, rs2, p2)
	if r.code != 0 {
		t.Fatalf("exit %d: %v", r.code, r.err)
	}
	var seq []string
	for _, a := range r.client.Actions() {
		if a.GetVerb() == "patch" && a.GetResource().Resource == "deployments" {
			pa := a.(k8stesting.PatchAction)
			kind := "apply"
			if isDryRun(pa) {
				kind = "dry-run"
			}
			if o, ok := pa.(interface{ GetPatchOptions() metav1.PatchOptions }); ok && o.GetPatchOptions().FieldManager != plan.FieldManager("db-creds") {
				t.Errorf("field manager %q; want %q", o.GetPatchOptions().FieldManager, plan.FieldManager("db-creds"))
			}
			seq = append(seq, kind+" "+pa.GetName())
		}
	}
	// Dry-runs go out concurrently, in any order, but all before the first
	// apply; applies go one workload at a time, in order.
	if s := strings.Join(seq, ","); s != "dry-run web,dry-run web2,apply web,apply web2" && s != "dry-run web2,dry-run web,apply web,apply web2" {
		t.Errorf("patch sequence %q; want both dry-runs, then apply web, apply web2", s)
	}
	// Injected: the object in the (fake) API server carries the volume.
	got, _ := r.client.AppsV1().Deployments("shop").Get(context.Background(), "web", metav1.GetOptions{})
	if got.Labels["k8secrets.io/injected"] != "true" || volumeNames(got.Spec.Template.Spec.Volumes) != restartInjection || got.Spec.Template.Spec.Volumes[0].Secret.SecretName != "db-creds" {
		t.Errorf("deployment after inject: labels %v volumes %+v", got.Labels, got.Spec.Template.Spec.Volumes)
	}
	events, _ := r.client.EventsV1().Events("shop").List(context.Background(), metav1.ListOptions{})
	if len(events.Items) != 2 || events.Items[0].Reason != "Injected" {
		t.Errorf("events = %+v; want one Injected per workload", events.Items)
	}
}

func TestDryRunRejection(t *testing.T) {
	d, rs, p := webDeployment("web")
	r := runJobWith(t, inject(), false, func(c *fake.Clientset) {
		c.PrependReactor("patch", "deployments", func(a k8stesting.Action) (bool, runtime.Object, error) {
			return true, nil, apierrors.NewInvalid(schema.GroupKind{Group: "apps", Kind: "Deployment"}, "web", nil)
		})
	}, secretObj("db-creds", corev1.SecretTypeOpaque), d, rs, p)
	if r.code != 4 || !strings.Contains(errString(r.err), "nothing was changed") {
		t.Fatalf("exit %d (%v); want 4 and 'nothing was changed'", r.code, r.err)
	}
}

func TestLeaseHeld(t *testing.T) {
	d, rs, p := webDeployment("web")
	lease := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: "k8secrets-db-creds", Namespace: "shop"},
		Spec: coordinationv1.LeaseSpec{HolderIdentity: ptr.To("other-run"), LeaseDurationSeconds: ptr.To(int32(20)),
			RenewTime: ptr.To(metav1.NewMicroTime(time.Now()))}}
	// The other run renews: its record changes while this run looks.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r := runJobWith(t, inject(), false, func(c *fake.Clientset) {
		go func() {
			for ctx.Err() == nil {
				time.Sleep(100 * time.Millisecond)
				l, err := c.CoordinationV1().Leases("shop").Get(ctx, "k8secrets-db-creds", metav1.GetOptions{})
				if err == nil {
					l.Spec.RenewTime = ptr.To(metav1.NewMicroTime(time.Now()))
					_, _ = c.CoordinationV1().Leases("shop").Update(ctx, l, metav1.UpdateOptions{})
				}
			}
		}()
	}, secretObj("db-creds", corev1.SecretTypeOpaque), d, rs, p, lease)
	cancel()
	if r.code != 7 || !strings.Contains(errString(r.err), "held by other-run") {
		t.Fatalf("exit %d (%v); want 7 naming the holder", r.code, r.err)
	}
	// A lease left by a killed run (no renewals) is taken over once it has
	// not changed for its duration, as this run counts it (1 s here).
	lease.Spec.LeaseDurationSeconds = ptr.To(int32(1))
	r = runJob(t, inject(), false, secretObj("db-creds", corev1.SecretTypeOpaque), d, rs, p, lease)
	if r.code != 0 {
		t.Fatalf("with an expired lease: exit %d (%v); want 0", r.code, r.err)
	}
	if _, err := r.client.CoordinationV1().Leases("shop").Get(context.Background(), "k8secrets-db-creds", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("lease after the run: %v; want it released (deleted)", err)
	}
}

func TestRerunChangesNothing(t *testing.T) {
	d, rs, p := webDeployment("web")
	r := runJob(t, inject(), false, secretObj("db-creds", corev1.SecretTypeOpaque), d, rs, p)
	if r.code != 0 {
		t.Fatal(r.err)
	}
	injected, _ := r.client.AppsV1().Deployments("shop").Get(context.Background(), "web", metav1.GetOptions{})
	r2 := runJob(t, inject(), false, secretObj("db-creds", corev1.SecretTypeOpaque), injected, rs, p)
	if r2.code != 0 || !strings.Contains(r2.out, "unchanged") {
		t.Fatalf("rerun: exit %d (%v), report %q; want 0 and unchanged", r2.code, r2.err, r2.out)
	}
	for _, a := range writes(r2.client) {
		if a.GetResource().Resource == "deployments" {
			t.Errorf("rerun wrote to deployments: %v", a)
		}
	}
}

// newFake is a fake cluster that, like an API server and unlike the plain
// fake, bumps a Deployment's generation on each apply and does not persist
// dry-run applies.
func newFake(objs ...runtime.Object) *fake.Clientset {
	client := fake.NewClientset(objs...)
	client.Discovery().(*fakediscovery.FakeDiscovery).FakedServerVersion = &version.Info{GitVersion: "v1.37.2"}
	gvr := appsv1.SchemeGroupVersion.WithResource("deployments")
	// The fake ignores dryRun: answer the pod dry-run without storing it.
	client.PrependReactor("create", "pods", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if ca := a.(k8stesting.CreateActionImpl); isDryRunCreate(ca) {
			return true, ca.GetObject(), nil
		}
		return false, nil, nil
	})
	client.PrependReactor("patch", "deployments", func(a k8stesting.Action) (bool, runtime.Object, error) {
		pa := a.(k8stesting.PatchActionImpl)
		cur, err := client.Tracker().Get(gvr, pa.GetNamespace(), pa.GetName())
		if err != nil {
			return true, nil, err
		}
		if isDryRun(pa) {
			return true, cur, nil
		}
		_, obj, err := k8stesting.ObjectReaction(client.Tracker())(a)
		if err != nil {
			return true, nil, err
		}
		d := obj.(*appsv1.Deployment).DeepCopy()
		if !equality.Semantic.DeepEqual(d.Spec, cur.(*appsv1.Deployment).Spec) {
			d.Generation++
			if err := client.Tracker().Update(gvr, d, d.Namespace); err != nil {
				return true, nil, err
			}
		}
		return true, d, nil
	})
	return client
}

func TestRollbackFailsExit6(t *testing.T) {
	d, rs, p := webDeployment("web")
	applies := 0
	r := runJobWith(t, inject("--timeout", "1s"), true, func(c *fake.Clientset) {
		c.PrependReactor("patch", "deployments", func(a k8stesting.Action) (bool, runtime.Object, error) {
			if isDryRun(a.(k8stesting.PatchActionImpl)) {
				return false, nil, nil
			}
			if applies++; applies > 1 { // the apply goes through, the rollback does not
				return true, nil, apierrors.NewServiceUnavailable("etcd is down")
			}
			return false, nil, nil
		})
	}, secretObj("db-creds", corev1.SecretTypeOpaque), d, rs, p)
	if r.code != 6 {
		t.Fatalf("exit %d (%v); want 6", r.code, r.err)
	}
	for _, want := range []string{"Deployment shop/web", "kubectl rollout undo deployment/web -n shop"} {
		if !strings.Contains(errString(r.err), want) {
			t.Errorf("error %q does not name %q", r.err, want)
		}
	}
}

func TestAPIErrorExit1(t *testing.T) {
	d, rs, p := webDeployment("web")
	r := runJobWith(t, inject(), false, func(c *fake.Clientset) {
		c.PrependReactor("list", "pods", func(k8stesting.Action) (bool, runtime.Object, error) {
			return true, nil, apierrors.NewInternalError(errors.New("etcdserver: request timed out"))
		})
	}, secretObj("db-creds", corev1.SecretTypeOpaque), d, rs, p)
	if r.code != 1 || !strings.Contains(errString(r.err), `list pods in shop matching "app=web"`) {
		t.Fatalf("exit %d (%v); want 1 naming what failed", r.code, r.err)
	}
}

// restartInjection names the volumes an injection of db-creds in restart
// mode (the default) brings: the Secret's, and the agent's turn file (the
// pod's k8secrets.io/refreshed-at, plan.withTurns).
const restartInjection = "k8secrets-db-creds,k8secrets-db-creds-turn"

// volumeNames lists the volumes' names, in order, comma-separated.
func volumeNames(vs []corev1.Volume) string {
	names := make([]string, len(vs))
	for i, v := range vs {
		names[i] = v.Name
	}
	return strings.Join(names, ",")
}
