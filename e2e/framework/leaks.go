package framework

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Leaked reports whether text holds any of values in a form a log line or an
// Event could carry it: raw, base64 (standard and URL alphabets, with and
// without padding) or hex (either case). Values shorter than 8 bytes are
// ignored: they would match by chance.
func Leaked(text []byte, values ...[]byte) bool {
	for _, v := range values {
		if len(v) < 8 {
			continue
		}
		for _, form := range encodings(v) {
			if bytes.Contains(text, form) {
				return true
			}
		}
	}
	return false
}

func encodings(v []byte) [][]byte {
	h := hex.EncodeToString(v)
	return [][]byte{
		v,
		[]byte(base64.StdEncoding.EncodeToString(v)),
		[]byte(base64.RawStdEncoding.EncodeToString(v)),
		[]byte(base64.URLEncoding.EncodeToString(v)),
		[]byte(base64.RawURLEncoding.EncodeToString(v)),
		[]byte(h),
		[]byte(strings.ToUpper(h)),
	}
}

// JobPodLabel marks the pods of the shipped k8secrets Job (manifests/base).
const JobPodLabel = "app.kubernetes.io/name=k8secrets"

// GuardSecrets makes the test fail, when it ends and before its namespace is
// deleted, if any of values appears in ns's Events (core and
// events.k8s.io share storage: one list reads both) or in the logs, current
// and previous, of the k8secrets containers there: every agent sidecar
// (k8secrets-agent-*) and every container of the Job's pods. App containers
// are not read: the test app prints the files it is asked to. Call it after
// c.Namespace(t), so that its cleanup runs first.
func (c *Cluster) GuardSecrets(tb testing.TB, ns string, values ...[]byte) {
	tb.Helper()
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		events, err := c.Client.CoreV1().Events(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			tb.Errorf("secret leak check: list events in %s: %v", ns, err)
		} else {
			for _, e := range events.Items {
				if Leaked([]byte(e.Message), values...) {
					tb.Errorf("Event %s %s/%s (%s) carries a Secret's value (withheld)", ns, e.InvolvedObject.Kind, e.InvolvedObject.Name, e.Reason)
				}
			}
		}
		pods, err := c.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			tb.Errorf("secret leak check: list pods in %s: %v", ns, err)
			return
		}
		for _, p := range pods.Items {
			job := p.Labels["app.kubernetes.io/name"] == "k8secrets"
			for _, name := range containerNames(&p) {
				if !job && !strings.HasPrefix(name, "k8secrets-agent") {
					continue
				}
				for _, previous := range []bool{false, true} {
					logs, err := c.Client.CoreV1().Pods(ns).GetLogs(p.Name, &corev1.PodLogOptions{Container: name, Previous: previous}).DoRaw(ctx)
					if err != nil {
						continue // not started, or no previous instance
					}
					if Leaked(logs, values...) {
						tb.Errorf("the log of %s/%s container %s (previous=%t) carries a Secret's value (withheld)", ns, p.Name, name, previous)
					}
				}
			}
		}
	})
}

func containerNames(p *corev1.Pod) []string {
	var names []string
	for _, cs := range [][]corev1.Container{p.Spec.InitContainers, p.Spec.Containers} {
		for _, ct := range cs {
			names = append(names, ct.Name)
		}
	}
	return names
}
