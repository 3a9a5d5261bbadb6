package main

import (
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/utils/ptr"

	"github.com/k8secrets/k8secrets/internal/contentid"
	"github.com/k8secrets/k8secrets/internal/wellknown"
	"github.com/k8secrets/k8secrets/job/internal/plan"
	"github.com/k8secrets/k8secrets/job/internal/record"
)

// fakeAgent serves /status on 127.0.0.1 with one directory of the given
// state; a nil directory answers 404.
func fakeAgent(t *testing.T, dir map[string]string) int32 {
	t.Helper()
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if dir == nil || r.URL.Path != "/status" {
			http.NotFound(w, r)
			return
		}
		d := map[string]string{"path": "/var/run/secrets/k8secrets/db-creds"}
		for k, v := range dir {
			d[k] = v
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"agent": "fake", "keyed": true, "directories": []map[string]string{d}})
	}))
	t.Cleanup(s.Close)
	_, p, _ := net.SplitHostPort(s.Listener.Addr().String())
	n, _ := strconv.Atoi(p)
	return int32(n)
}

// injectedDeployment is Deployment name, injected with db-creds, and its
// pods, each with an agent at 127.0.0.1:port holding key.
func injectedDeployment(name, key string, ports ...int32) []runtime.Object {
	id := plan.ID("db-creds")
	d := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "shop", Labels: map[string]string{wellknown.LabelInjected: "true"}},
		Spec: appsv1.DeploymentSpec{Replicas: ptr.To(int32(len(ports))), Template: corev1.PodTemplateSpec{
			ObjectMeta: metav1.ObjectMeta{Annotations: map[string]string{plan.SecretAnnotation(id): "db-creds", plan.HashAnnotation(id): "0123456789abcdef"}}}},
		Status: appsv1.DeploymentStatus{Replicas: int32(len(ports)), UpdatedReplicas: int32(len(ports)), AvailableReplicas: int32(len(ports))}}
	objs := []runtime.Object{d}
	for i, port := range ports {
		objs = append(objs, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name + "-5d8f-" + string(rune('a'+i)), Namespace: "shop", Labels: map[string]string{"pod-template-hash": "5d8f"},
				OwnerReferences: []metav1.OwnerReference{{Kind: "ReplicaSet", Name: name + "-5d8f", Controller: ptr.To(true)}}},
			Spec: corev1.PodSpec{
				InitContainers: []corev1.Container{{Name: plan.AgentName(id), Env: []corev1.EnvVar{{Name: contentid.KeyEnv, Value: key}},
					Args: []string{"--watch=/var/run/secrets/k8secrets/db-creds", "--listen=:" + strconv.Itoa(int(port))}}},
				Volumes: []corev1.Volume{{Name: "k8secrets-db-creds", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "db-creds"}}}},
			},
			Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "127.0.0.1"},
		})
	}
	return objs
}

// status shows, per injected workload, how many of its pods run the current
// content and why the others do not.
func TestStatusPods(t *testing.T) {
	key, _ := contentid.NewKey()
	cur, _ := contentid.Of(key, map[string][]byte{"password": []byte(secretValue)})
	old, _ := contentid.Of(key, map[string][]byte{"password": []byte("old")})
	current := fakeAgent(t, map[string]string{"loaded": cur, "seen": cur, "state": "loaded", "loadedAt": "2026-12-01T01:02:03Z"})
	failing := fakeAgent(t, map[string]string{"loaded": old, "seen": cur, "state": "failed", "error": "signal nginx (pid 12): operation not permitted"})
	oldAgent := fakeAgent(t, nil)
	objs := append(injectedDeployment("web", key, current, failing, oldAgent), injectedDeployment("api", key, current)...)
	objs = append(objs, secretObj("db-creds", corev1.SecretTypeOpaque))

	r := runJob(t, []string{"status", "--verify-via", "direct", "-o", "json"}, false, objs...)
	if r.code != 0 {
		t.Fatalf("status: exit %d (%v)", r.code, r.err)
	}
	if strings.Contains(r.out, key) {
		t.Fatal("the report holds the content key")
	}
	var rep record.Report
	if err := json.Unmarshal([]byte(r.out), &rep); err != nil {
		t.Fatalf("-o json: %v\n%s", err, r.out)
	}
	got := map[string]string{}
	for _, e := range rep.Workloads {
		v := e.Verification
		if v == nil {
			t.Fatalf("status: %s %s has no verification", e.Kind, e.Name)
		}
		got[e.Name] = strconv.Itoa(v.Current) + "/" + strconv.Itoa(v.Total) + " via " + v.Via
		for _, p := range v.Pods {
			got[p.Name] = p.State + ": " + p.Reason
		}
	}
	for name, want := range map[string]string{
		"web": "1/3 via direct", "api": "1/1 via direct", "web-5d8f-a": "current: ",
		"web-5d8f-b": "failed: reload failed: signal nginx (pid 12): operation not permitted",
		"web-5d8f-c": "unknown: its agent has no /status (404)", "api-5d8f-a": "current: ",
	} {
		if !strings.HasPrefix(got[name], want) {
			t.Errorf("status: %s = %q; want %q", name, got[name], want)
		}
	}

	r = runJob(t, []string{"status", "--verify-via", "direct"}, false, objs...)
	for _, want := range []string{
		"Deployment shop/web (secret db-creds): 1/3 pods run the current content (asked via direct)",
		"web-5d8f-b  failed   reload failed: signal nginx (pid 12): operation not permitted",
		"loaded " + cur[:12] + " at 2026-12-01T01:02:03Z",
	} {
		if !strings.Contains(r.out, want) {
			t.Errorf("status text lacks %q:\n%s", want, r.out)
		}
	}
	t.Logf("status:\n%s", r.out)
}

// refresh --wait exits 9 naming the pod that did not load the content, and
// the way it asked; unknown pods do not fail it.
func TestRefreshWaitExit9(t *testing.T) {
	key, _ := contentid.NewKey()
	cur, _ := contentid.Of(key, map[string][]byte{"password": []byte(secretValue)})
	old, _ := contentid.Of(key, map[string][]byte{"password": []byte("old")})
	current := fakeAgent(t, map[string]string{"loaded": cur, "seen": cur, "state": "loaded"})
	stale := fakeAgent(t, map[string]string{"loaded": old, "seen": old, "state": "loaded"})
	oldAgent := fakeAgent(t, nil)
	sec := secretObj("db-creds", corev1.SecretTypeOpaque)

	r := runJob(t, []string{"refresh", "--secret", "db-creds", "--verify-via", "direct", "--timeout", "1s"}, false,
		append(injectedDeployment("web", key, current, stale, oldAgent), sec)...)
	if r.code != 9 || !strings.Contains(errString(r.err), "web-5d8f-b (stale: old content loaded; the kubelet has not written") ||
		!strings.Contains(errString(r.err), "1 of 3 pods current (1 unknown) via direct") || strings.Contains(errString(r.err), "web-5d8f-c") {
		t.Errorf("refresh --wait, one pod stale: exit %d (%v); want 9 naming web-5d8f-b only, via direct", r.code, r.err)
	}
	r = runJob(t, []string{"refresh", "--secret", "db-creds", "--verify-via", "direct"}, false,
		append(injectedDeployment("web", key, current, oldAgent), sec)...)
	if r.code != 0 || !strings.Contains(r.out, "web-5d8f-b (its agent has no /status (404)") {
		t.Errorf("refresh --wait, one pod unknown: exit %d (%v); want 0 listing web-5d8f-b as unknown\n%s", r.code, r.err, r.out)
	}
	if !strings.Contains(r.out, "1/2 pods run the current content (asked via direct)") {
		t.Errorf("refresh --wait report lacks the verification:\n%s", r.out)
	}
}
