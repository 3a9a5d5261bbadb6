//go:build e2e

package reload

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/transport/spdy"

	"github.com/k8secrets/k8secrets/e2e/framework"
)

// agentSkew is the agent's allowance for a certificate's NotBefore ahead of
// the node's clock (agent/internal/certs.Skew).
const agentSkew = 5 * time.Second

// TestTLSNotBeforeAhead: a TLS Secret updated with a certificate whose
// NotBefore is 20s ahead is refused (no reload, the refused gauge at 1),
// then reloaded once the clock reaches it, with no further update. The
// kind node shares this machine's clock.
func TestTLSNotBeforeAhead(t *testing.T) {
	c, ctx, ns := begin(t, 6*time.Minute)
	const secret = "demo-tls"
	now := time.Now()
	cert, key := tlsPair(t, now.Add(-time.Hour), now.Add(24*time.Hour))
	b := injectedWeb(ctx, t, c, ns, secret, corev1.SecretTypeTLS, tlsData("v1", cert, key), 1, "signal:SIGHUP")[0]
	pod := b.pod.Name
	refusedGauge := []string{"k8secrets_agent_content_refused", `path="` + mountPath(secret) + `"`}
	const refusals = "k8secrets_agent_invalid_content_total"
	before, err := agentMetric(ctx, c, ns, pod, refusals)
	if err != nil {
		t.Fatal(err)
	}

	notBefore := time.Now().Add(20 * time.Second).Truncate(time.Second)
	aheadCert, aheadKey := tlsPair(t, notBefore, notBefore.Add(24*time.Hour))
	updateSecret(ctx, t, c, ns, secret, tlsData("v2", aheadCert, aheadKey))
	refresh(ctx, t, c, ns, secret)
	if _, err := waitMetric(ctx, c, ns, pod, refreshed, func(v float64) bool { return v > before }, refusals); err != nil {
		t.Fatalf("certificate with NotBefore %s not refused: %v", notBefore.Format(time.RFC3339), err)
	}
	seenRefused := time.Now()
	if v, err := agentMetric(ctx, c, ns, pod, refusedGauge[0], refusedGauge[1:]...); err != nil {
		t.Error(err)
	} else if v != 1 {
		t.Errorf("pod %s: %s = %v while the certificate is refused; want 1", pod, refusedGauge[0], v)
	}
	if !seenRefused.Before(notBefore.Add(-agentSkew)) {
		t.Fatalf("the refusal was seen at %s, after the certificate became valid (%s): the cluster was too slow to prove anything", seenRefused.Format(time.RFC3339Nano), notBefore.Add(-agentSkew).Format(time.RFC3339))
	}
	if s, err := getApp(ctx, c, ns, pod); err != nil {
		t.Fatal(err)
	} else if s.Version != "v1" || s.Reloads != 0 {
		t.Errorf("while the certificate is not valid yet: app serves %s; want v1, no reload", s)
	}

	// No update from here on: the agent alone notices the clock.
	s, err := waitApp(ctx, c, ns, pod, time.Until(notBefore)+refreshed, "version v2", version("v2"))
	if err != nil {
		t.Fatalf("certificate not reloaded once valid: %v", err)
	}
	if s.Loaded.Before(notBefore.Add(-agentSkew - time.Second)) {
		t.Errorf("app loaded v2 at %s, before the certificate was valid (NotBefore %s, skew %s)", s.Loaded.Format(time.RFC3339Nano), notBefore.Format(time.RFC3339), agentSkew)
	}
	t.Logf("refused at %s, reloaded at %s (NotBefore %s)", seenRefused.Format(time.RFC3339Nano), s.Loaded.Format(time.RFC3339Nano), notBefore.Format(time.RFC3339))
	checkReloadedInPlace(ctx, t, c, ns, "v2", []seen{b})
	checkOneReload(ctx, t, c, ns, pod, "signal")
	if v, err := agentMetric(ctx, c, ns, pod, refusedGauge[0], refusedGauge[1:]...); err != nil {
		t.Error(err)
	} else if v != 0 {
		t.Errorf("pod %s: %s = %v after the certificate became valid; want 0", pod, refusedGauge[0], v)
	}
}

// TestIdleConnectionsDoNotStarveProbes: 32 idle TCP connections to the
// agent's port, held (and reopened when the agent closes them) for longer
// than the kubelet needs to restart a container whose liveness probe fails
// (3 failures 10s apart): /healthz keeps answering, the kubelet records no
// failed probe, and the agent's restartCount stays 0.
func TestIdleConnectionsDoNotStarveProbes(t *testing.T) {
	c, ctx, ns := begin(t, 6*time.Minute)
	const secret = "demo-secret"
	b := injectedWeb(ctx, t, c, ns, secret, corev1.SecretTypeOpaque, opaque("v1"), 1, "signal:SIGHUP")[0]
	pod := b.pod.Name
	agent := agentOf(&b.pod).Name
	if r := restarts(&b.pod, agent); r != 0 {
		t.Fatalf("pod %s: agent restartCount %d before the test", pod, r)
	}

	local := portForward(ctx, t, c, ns, pod, agentPort)
	const idle = 32
	const hold = 45 * time.Second
	holdCtx, stop := context.WithTimeout(ctx, hold)
	defer stop()
	var opened atomic.Int64
	var wg sync.WaitGroup
	for range idle {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for holdCtx.Err() == nil {
				conn, err := net.Dial("tcp", local)
				if err != nil {
					time.Sleep(100 * time.Millisecond)
					continue
				}
				opened.Add(1)
				// Send nothing; wait for the agent (or the end).
				done := context.AfterFunc(holdCtx, func() { conn.Close() })
				_, _ = io.Copy(io.Discard, conn)
				done()
				conn.Close()
				time.Sleep(50 * time.Millisecond)
			}
		}()
	}

	// Meanwhile, ask /healthz every second through the API server's proxy.
	var slow, failed []string
	checks := 0
	for holdCtx.Err() == nil {
		start := time.Now()
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		body, err := c.Client.CoreV1().Pods(ns).ProxyGet("http", pod, agentPort, "/healthz", nil).DoRaw(pctx)
		cancel()
		took := time.Since(start)
		checks++
		switch {
		case err != nil || strings.TrimSpace(string(body)) != "ok":
			failed = append(failed, fmt.Sprintf("%s: %v %q", start.Format(time.RFC3339), err, body))
		case took > time.Second:
			slow = append(slow, fmt.Sprintf("%s: %s", start.Format(time.RFC3339), took))
		}
		time.Sleep(time.Second)
	}
	stop()
	wg.Wait()
	t.Logf("%d connections opened by %d idle clients over %s; %d /healthz checks, %d over a second", opened.Load(), idle, hold, checks, len(slow))
	if opened.Load() < idle {
		t.Fatalf("only %d connections opened; want at least %d", opened.Load(), idle)
	}
	if len(failed) > 0 {
		t.Errorf("/healthz failed %d of %d times with %d idle connections open: %q", len(failed), checks, idle, failed)
	}
	// The API server's proxy adds its own delays on a loaded node: one
	// slow answer in ten is tolerated, the kubelet's 1s probe timeout
	// (checked below through its Events) is not.
	if len(slow)*10 > checks {
		t.Errorf("/healthz took over a second %d of %d times: %q", len(slow), checks, slow)
	}

	p, err := c.Client.CoreV1().Pods(ns).Get(ctx, pod, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if r := restarts(p, agent); r != 0 {
		t.Errorf("pod %s: agent restartCount %d; want 0", pod, r)
	}
	evs, err := c.Client.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + pod})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range evs.Items {
		if e.Reason == "Unhealthy" && strings.Contains(e.InvolvedObject.FieldPath, agent) {
			t.Errorf("pod %s: kubelet event %s %q (x%d)", pod, e.Reason, e.Message, e.Count)
		}
	}
	// And the agent still does its work.
	updateSecret(ctx, t, c, ns, secret, opaque("v2"))
	refresh(ctx, t, c, ns, secret)
	checkReloadedInPlace(ctx, t, c, ns, "v2", []seen{b})
}

// portForward forwards a local port to port of the pod, as kubectl
// port-forward does: each local connection is a connection to the pod's
// port made by the node. It returns the local address.
func portForward(ctx context.Context, t *testing.T, c *framework.Cluster, ns, pod, port string) string {
	t.Helper()
	transport, upgrader, err := spdy.RoundTripperFor(c.Config)
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(c.Client.CoreV1().RESTClient().Post().Resource("pods").Namespace(ns).Name(pod).SubResource("portforward").URL().String())
	if err != nil {
		t.Fatal(err)
	}
	dialer := spdy.NewDialer(upgrader, &http.Client{Transport: transport}, "POST", u)
	stop, ready := make(chan struct{}), make(chan struct{})
	fw, err := portforward.NewOnAddresses(dialer, []string{"127.0.0.1"}, []string{"0:" + port}, stop, ready, io.Discard, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- fw.ForwardPorts() }()
	t.Cleanup(func() { close(stop) })
	select {
	case <-ready:
	case err := <-errc:
		t.Fatalf("port-forward to pod %s/%s:%s: %v", ns, pod, port, err)
	case <-ctx.Done():
		t.Fatal(ctx.Err())
	}
	ports, err := fw.GetPorts()
	if err != nil || len(ports) == 0 {
		t.Fatalf("port-forward to pod %s/%s:%s: no local port: %v", ns, pod, port, err)
	}
	return fmt.Sprintf("127.0.0.1:%d", ports[0].Local)
}

// TestHTTPSReloadWithCAFile: the agent reloads an app over HTTPS whose
// certificate is signed by a private CA, trusting it through --http-ca-file
// from a mounted ConfigMap (the FROM-scratch image has no CA pool). The pod
// is written by hand, as a user who runs the agent without the Job would.
func TestHTTPSReloadWithCAFile(t *testing.T) {
	c, ctx, ns := begin(t, 6*time.Minute)
	const secret = "demo-secret"
	loadImages(ctx, t, c)
	caPEM, servingCert, servingKey := servingPair(t, "127.0.0.1")
	createSecret(ctx, t, c, ns, secret, corev1.SecretTypeOpaque, opaque("v1"))
	createSecret(ctx, t, c, ns, "demo-serving", corev1.SecretTypeTLS, map[string][]byte{corev1.TLSCertKey: servingCert, corev1.TLSPrivateKeyKey: servingKey})
	if _, err := c.Client.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "demo-ca"},
		Data:       map[string]string{"ca.crt": string(caPEM)},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	tag := imageTag(t)
	tmpl := demoTemplate(web.name, secret, tag)
	app := &tmpl.Spec.Containers[0]
	app.Args = append(app.Args, "--tls-listen=:8443", "--tls-dir=/var/run/tls")
	app.VolumeMounts = []corev1.VolumeMount{
		{Name: "secret", MountPath: mountPath(secret), ReadOnly: true},
		{Name: "serving", MountPath: "/var/run/tls", ReadOnly: true},
	}
	agentSC := app.SecurityContext.DeepCopy()
	agentSC.RunAsUser, agentSC.RunAsGroup = ptr(int64(65532)), ptr(int64(65532))
	tmpl.Spec.Containers = append(tmpl.Spec.Containers, corev1.Container{
		Name:            "agent",
		Image:           "k8secrets-agent:" + tag,
		ImagePullPolicy: corev1.PullIfNotPresent,
		Args: []string{
			"--watch=" + mountPath(secret),
			"--reload=http:https://127.0.0.1:8443/-/reload",
			"--http-ca-file=/var/run/ca/ca.crt",
			"--log-format=json",
		},
		VolumeMounts: []corev1.VolumeMount{
			{Name: "secret", MountPath: mountPath(secret), ReadOnly: true},
			{Name: "ca", MountPath: "/var/run/ca", ReadOnly: true},
		},
		SecurityContext: agentSC,
	})
	tmpl.Spec.Volumes = []corev1.Volume{
		{Name: "secret", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: secret}}},
		{Name: "serving", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "demo-serving"}}},
		{Name: "ca", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: "demo-ca"}}}},
	}
	replicas := int32(1)
	if _, err := c.Client.AppsV1().Deployments(ns).Create(ctx, &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: web.name},
		Spec:       appsv1.DeploymentSpec{Replicas: &replicas, Selector: &metav1.LabelSelector{MatchLabels: tmpl.Labels}, Template: tmpl},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pods := waitRolledOut(ctx, t, c, ns, web, 1)
	p := pods[0]
	s1, err := waitApp(ctx, c, ns, p.Name, refreshed, "version v1", version("v1"))
	if err != nil {
		t.Fatal(err)
	}
	// The agent is up (it reads the CA file at start: a bad one is exit 2).
	if _, err := waitMetric(ctx, c, ns, p.Name, refreshed, func(float64) bool { return true }, "k8secrets_agent_build_info"); err != nil {
		t.Fatal(err)
	}

	updateSecret(ctx, t, c, ns, secret, opaque("v2"))
	refresh(ctx, t, c, ns, secret)
	checkReloadedInPlace(ctx, t, c, ns, "v2", []seen{{pod: p, app: s1, restarts: restarts(&p, appContainer)}})
	checkOneReload(ctx, t, c, ns, p.Name, "http")
	if n, err := agentMetric(ctx, c, ns, p.Name, "k8secrets_agent_reloads_total", `result="failure"`); err != nil {
		t.Error(err)
	} else if n != 0 {
		t.Errorf("pod %s: agent counts %v failed reloads; want 0 (the CA file vouches for the app's certificate)", p.Name, n)
	}
	if cur, err := c.Client.CoreV1().Pods(ns).Get(ctx, p.Name, metav1.GetOptions{}); err != nil {
		t.Error(err)
	} else if r := restarts(cur, "agent"); r != 0 {
		t.Errorf("pod %s: agent restartCount %d; want 0", p.Name, r)
	}
}

// servingPair is a CA certificate and a serving certificate and key it
// signed for the IP address ip, PEM-encoded.
func servingPair(t *testing.T, ip string) (caPEM, certPEM, keyPEM []byte) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "k8secrets e2e CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: ip},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IPAddresses: []net.IP{net.ParseIP(ip)},
		KeyUsage:    x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
}
