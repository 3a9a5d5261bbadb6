// Package cluster creates, loads and deletes the kind cluster that the e2e
// tests run on, through kind's Go API.
//
// The node image is the stock kindest/node of the pinned kind when Docker
// has it, else the one `make node-image` builds offline. Creation waits for
// the node, kube-proxy and CoreDNS: a pod started before kube-proxy has
// programmed the Services sends Service traffic out of the node, which shows
// up as TLS or DNS errors rather than timeouts. Where `docker run
// --privileged` is refused (no CAP_SYS_RESOURCE in the bounding set), kind
// runs through a docker wrapper that grants the node everything else; only
// there.
package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	kindv1alpha4 "sigs.k8s.io/kind/pkg/apis/config/v1alpha4"
	kind "sigs.k8s.io/kind/pkg/cluster"
	"sigs.k8s.io/kind/pkg/cluster/nodeutils"
	kindlog "sigs.k8s.io/kind/pkg/log"
)

// DefaultName is the kind cluster's name; its node container is
// DefaultName + "-control-plane".
const DefaultName = "k8secrets"

// StockImage is the node image kind v0.33 was released with. It is used
// when Docker already has it; nothing is pulled.
const StockImage = "kindest/node:v1.37.0"

// Options describe the cluster.
type Options struct {
	// Name of the kind cluster; DefaultName if empty.
	Name string
	// Image is the node image; empty picks StockImage if present locally,
	// else "k8secrets/node:" + KubernetesVersion.
	Image string
	// KubernetesVersion names the offline node image (hack/versions.mk).
	KubernetesVersion string
	// Kubeconfig is the file to write the admin kubeconfig to; kind's
	// default (~/.kube/config) is left alone.
	Kubeconfig string
	// CacheDir holds the docker wrapper and collected logs.
	CacheDir string
	// SyncFrequency, if set, shortens the kubelet's resync period, which
	// bounds how late a Secret update reaches a mounted volume (default
	// 1m, plus up to 50% jitter). Tests that measure what users get leave
	// it zero.
	SyncFrequency time.Duration
	// KubeadmPatches are appended to the cluster's own kubeadm config
	// patches (kind merges each into the kubeadm document of the same kind).
	KubeadmPatches []string
	// Logger receives kind's progress and ours.
	Logger *slog.Logger
}

func (o *Options) defaults() {
	if o.Name == "" {
		o.Name = DefaultName
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.CacheDir == "" {
		home, _ := os.UserHomeDir()
		o.CacheDir = filepath.Join(home, ".cache", "k8secrets")
	}
	if o.Kubeconfig == "" {
		o.Kubeconfig = filepath.Join(o.CacheDir, "kind-"+o.Name+".kubeconfig")
	}
}

// ErrNoNodeImage means neither the stock node image nor the offline one is
// in Docker.
var ErrNoNodeImage = errors.New("no node image")

// Exists reports whether the cluster is there.
func Exists(o Options) (bool, error) {
	o.defaults()
	p, err := provider(o)
	if err != nil {
		return false, err
	}
	names, err := p.List()
	if err != nil {
		return false, fmt.Errorf("list kind clusters: %w", err)
	}
	for _, n := range names {
		if n == o.Name {
			return true, nil
		}
	}
	return false, nil
}

// Ensure makes sure the cluster exists and is ready: it keeps one that
// answers within a minute, and deletes and recreates one that does not (a
// node container stopped with its dockerd, e.g. when CI runs after the
// session that made it, does not come back healthy). It reports whether it
// created the cluster.
func Ensure(ctx context.Context, o Options) (created bool, err error) {
	o.defaults()
	exists, err := Exists(o)
	if err != nil {
		return false, err
	}
	if exists {
		err := nodesRunning(o)
		var path string
		if err == nil {
			path, err = WriteKubeconfig(o)
		}
		if err == nil {
			err = WaitReady(ctx, path, time.Minute)
		}
		if err == nil {
			return false, nil
		}
		o.Logger.Warn("existing cluster is not ready; recreating it", "name", o.Name, "err", err)
		if err := Delete(o); err != nil {
			return false, err
		}
	}
	return true, Create(ctx, o)
}

// nodesRunning returns an error naming the first node container that is
// not running.
func nodesRunning(o Options) error {
	p, err := provider(o)
	if err != nil {
		return err
	}
	nodes, err := p.ListNodes(o.Name)
	if err != nil {
		return fmt.Errorf("nodes of cluster %s: %w", o.Name, err)
	}
	for _, n := range nodes {
		out, err := exec.Command("docker", "inspect", "-f", "{{.State.Running}}", n.String()).Output()
		if err != nil || strings.TrimSpace(string(out)) != "true" {
			return fmt.Errorf("node container %s is not running", n.String())
		}
	}
	return nil
}

// Create creates the cluster, writes its kubeconfig to o.Kubeconfig and
// waits until the node is Ready, kube-proxy runs and CoreDNS is available.
// On failure it collects the nodes' logs under o.CacheDir, names the folder
// in the error and deletes the cluster.
func Create(ctx context.Context, o Options) error {
	o.defaults()
	image, err := nodeImage(o)
	if err != nil {
		return err
	}
	p, err := provider(o)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(o.Kubeconfig), 0o755); err != nil {
		return fmt.Errorf("create cluster %s: %w", o.Name, err)
	}
	o.Logger.Info("creating kind cluster", "name", o.Name, "image", image, "kubeconfig", o.Kubeconfig)
	start := time.Now()
	// kind creates the docker network "kind" if missing and never removes
	// it; remember that we made it so that Delete removes it too.
	if !dockerNetworkExists(kindNetwork) {
		if err := os.WriteFile(networkMarker(o), []byte(kindNetwork+"\n"), 0o644); err != nil {
			return fmt.Errorf("create cluster %s: %w", o.Name, err)
		}
	}
	err = p.Create(o.Name,
		kind.CreateWithV1Alpha4Config(config(o, image)),
		kind.CreateWithKubeconfigPath(o.Kubeconfig),
		kind.CreateWithWaitForReady(2*time.Minute),
		// Keep the nodes on failure long enough to collect their logs.
		kind.CreateWithRetain(true),
		kind.CreateWithDisplayUsage(false),
		kind.CreateWithDisplaySalutation(false),
	)
	if err == nil {
		err = WaitReady(ctx, o.Kubeconfig, 2*time.Minute)
	}
	if err != nil {
		logs := filepath.Join(o.CacheDir, "kind-logs", time.Now().UTC().Format("20060102T150405Z"))
		if cerr := p.CollectLogs(o.Name, logs); cerr != nil {
			logs = "(collecting logs failed: " + cerr.Error() + ")"
		}
		if derr := p.Delete(o.Name, o.Kubeconfig); derr != nil {
			o.Logger.Warn("delete failed cluster", "name", o.Name, "err", derr)
		}
		os.Remove(o.Kubeconfig)
		return fmt.Errorf("create cluster %s: %w; node logs in %s", o.Name, err, logs)
	}
	o.Logger.Info("cluster ready", "name", o.Name, "seconds", time.Since(start).Seconds())
	return nil
}

// Delete deletes the cluster's nodes and its kubeconfig file; nothing else.
func Delete(o Options) error {
	o.defaults()
	p, err := provider(o)
	if err != nil {
		return err
	}
	if err := p.Delete(o.Name, o.Kubeconfig); err != nil {
		return fmt.Errorf("delete cluster %s: %w", o.Name, err)
	}
	if err := os.Remove(o.Kubeconfig); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("delete cluster %s: %w", o.Name, err)
	}
	return removeNetworkIfOurs(o)
}

// kindNetwork is the docker network kind puts its nodes on.
const kindNetwork = "kind"

func networkMarker(o Options) string {
	return filepath.Join(o.CacheDir, "kind-"+o.Name+".network-created")
}

func dockerNetworkExists(name string) bool {
	return exec.Command("docker", "network", "inspect", name).Run() == nil
}

// removeNetworkIfOurs removes the kind network if Create made it and no
// container (another kind cluster's) still uses it.
func removeNetworkIfOurs(o Options) error {
	marker := networkMarker(o)
	if _, err := os.Stat(marker); err != nil {
		return nil
	}
	out, err := exec.Command("docker", "network", "inspect", "-f", "{{len .Containers}}", kindNetwork).Output()
	if err != nil {
		return os.Remove(marker) // already gone
	}
	if strings.TrimSpace(string(out)) != "0" {
		o.Logger.Info("keeping docker network: other containers use it", "network", kindNetwork)
		return nil
	}
	if out, err := exec.Command("docker", "network", "rm", kindNetwork).CombinedOutput(); err != nil {
		return fmt.Errorf("remove docker network %s: %w: %s", kindNetwork, err, strings.TrimSpace(string(out)))
	}
	return os.Remove(marker)
}

// WriteKubeconfig writes the cluster's admin kubeconfig to o.Kubeconfig
// (e.g. after the file was removed) and returns its path.
func WriteKubeconfig(o Options) (string, error) {
	o.defaults()
	p, err := provider(o)
	if err != nil {
		return "", err
	}
	if err := p.ExportKubeConfig(o.Name, o.Kubeconfig, false); err != nil {
		return "", fmt.Errorf("kubeconfig of cluster %s: %w", o.Name, err)
	}
	return o.Kubeconfig, nil
}

// Load copies images from the local Docker into every node's containerd,
// as `kind load docker-image` does. Pods use them with imagePullPolicy
// Never or IfNotPresent and a fixed tag.
func Load(ctx context.Context, o Options, images ...string) error {
	o.defaults()
	p, err := provider(o)
	if err != nil {
		return err
	}
	nodes, err := p.ListInternalNodes(o.Name)
	if err != nil {
		return fmt.Errorf("nodes of cluster %s: %w", o.Name, err)
	}
	if len(nodes) == 0 {
		return fmt.Errorf("cluster %s has no nodes; run `make cluster`", o.Name)
	}
	for _, image := range images {
		for _, n := range nodes {
			if err := loadImage(ctx, image, func(r io.Reader) error { return nodeutils.LoadImageArchive(n, r) }); err != nil {
				return fmt.Errorf("load image %s into node %s: %w", image, n.String(), err)
			}
		}
		o.Logger.Info("loaded image", "image", image, "cluster", o.Name)
	}
	return nil
}

func loadImage(ctx context.Context, image string, load func(io.Reader) error) error {
	cmd := exec.CommandContext(ctx, "docker", "save", image)
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("docker save: %w", err)
	}
	lerr := load(out)
	if lerr != nil {
		// Unblock docker save if the node stopped reading.
		io.Copy(io.Discard, out)
	}
	if err := cmd.Wait(); err != nil {
		return fmt.Errorf("docker save: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return lerr
}

// WaitReady waits until every node is Ready, the kube-proxy DaemonSet has
// all its pods ready and CoreDNS is available. CoreDNS reaches the API
// server through the kubernetes Service, so its readiness also proves that
// kube-proxy has programmed the Services.
func WaitReady(ctx context.Context, kubeconfig string, timeout time.Duration) error {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return fmt.Errorf("load kubeconfig %s: %w", kubeconfig, err)
	}
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("client for %s: %w", cfg.Host, err)
	}
	var last string
	err = wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		var ok bool
		last, ok = readiness(ctx, c)
		return ok, nil
	})
	if err != nil {
		return fmt.Errorf("wait for cluster: %s: %w", last, err)
	}
	return nil
}

// readiness says what the cluster still waits for, or true.
func readiness(ctx context.Context, c kubernetes.Interface) (string, bool) {
	nodes, err := c.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return "list nodes: " + err.Error(), false
	}
	if len(nodes.Items) == 0 {
		return "no nodes yet", false
	}
	for _, n := range nodes.Items {
		if !nodeReady(&n) {
			return "node " + n.Name + " not Ready", false
		}
	}
	ds, err := c.AppsV1().DaemonSets("kube-system").Get(ctx, "kube-proxy", metav1.GetOptions{})
	if err != nil {
		return "get daemonset kube-system/kube-proxy: " + err.Error(), false
	}
	if ds.Status.DesiredNumberScheduled == 0 || ds.Status.NumberReady < ds.Status.DesiredNumberScheduled {
		return fmt.Sprintf("kube-proxy: %d of %d pods ready", ds.Status.NumberReady, ds.Status.DesiredNumberScheduled), false
	}
	dep, err := c.AppsV1().Deployments("kube-system").Get(ctx, "coredns", metav1.GetOptions{})
	if err != nil {
		return "get deployment kube-system/coredns: " + err.Error(), false
	}
	if !deploymentAvailable(dep) {
		return fmt.Sprintf("coredns: %d of %d replicas available", dep.Status.AvailableReplicas, replicas(dep)), false
	}
	return "ready", true
}

func nodeReady(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func replicas(d *appsv1.Deployment) int32 {
	if d.Spec.Replicas == nil {
		return 1
	}
	return *d.Spec.Replicas
}

func deploymentAvailable(d *appsv1.Deployment) bool {
	return d.Status.ObservedGeneration >= d.Generation &&
		d.Status.UpdatedReplicas == replicas(d) &&
		d.Status.AvailableReplicas == replicas(d)
}

// config is the kind cluster: one node, the bridge CNI of the node image
// (kindnetd cannot be pulled offline), and a kubelet that accepts cgroup v1
// hosts (kubelets since 1.35 refuse them by default).
func config(o Options, image string) *kindv1alpha4.Cluster {
	kubelet := "kind: KubeletConfiguration\nfailCgroupV1: false\n"
	if o.SyncFrequency > 0 {
		kubelet += "syncFrequency: " + o.SyncFrequency.String() + "\n"
	}
	c := &kindv1alpha4.Cluster{
		TypeMeta: kindv1alpha4.TypeMeta{Kind: "Cluster", APIVersion: "kind.x-k8s.io/v1alpha4"},
		Nodes:    []kindv1alpha4.Node{{Role: kindv1alpha4.ControlPlaneRole, Image: image}},
		Networking: kindv1alpha4.Networking{
			DisableDefaultCNI: !isStock(image),
		},
		KubeadmConfigPatches: append([]string{kubelet}, o.KubeadmPatches...),
	}
	return c
}

func isStock(image string) bool { return strings.HasPrefix(image, "kindest/node:") }

// nodeImage picks o.Image, else the stock image if Docker has it, else the
// offline one.
func nodeImage(o Options) (string, error) {
	if o.Image != "" {
		if !dockerHas(o.Image) {
			return "", fmt.Errorf("node image %s: %w in docker; run `make node-image`", o.Image, ErrNoNodeImage)
		}
		return o.Image, nil
	}
	if dockerHas(StockImage) {
		return StockImage, nil
	}
	offline := "k8secrets/node:" + o.KubernetesVersion
	if o.KubernetesVersion != "" && dockerHas(offline) {
		return offline, nil
	}
	return "", fmt.Errorf("neither %s nor %s: %w in docker; run `make node-image` (builds the offline one)", StockImage, offline, ErrNoNodeImage)
}

func dockerHas(image string) bool {
	return exec.Command("docker", "image", "inspect", image).Run() == nil
}

// provider returns kind's docker provider, through the docker wrapper where
// `docker run --privileged` is refused.
func provider(o Options) (*kind.Provider, error) {
	if err := useWrapperIfNeeded(o); err != nil {
		return nil, err
	}
	return kind.NewProvider(kind.ProviderWithDocker(), kind.ProviderWithLogger(kindLogger{o.Logger})), nil
}

// kindLogger sends kind's messages to slog.
type kindLogger struct{ l *slog.Logger }

func (k kindLogger) Warn(m string) { k.l.Warn(m, "source", "kind") }
func (k kindLogger) Warnf(f string, a ...interface{}) {
	k.l.Warn(fmt.Sprintf(f, a...), "source", "kind")
}
func (k kindLogger) Error(m string) { k.l.Error(m, "source", "kind") }
func (k kindLogger) Errorf(f string, a ...interface{}) {
	k.l.Error(fmt.Sprintf(f, a...), "source", "kind")
}
func (k kindLogger) V(v kindlog.Level) kindlog.InfoLogger {
	if v > 0 {
		return discard{}
	}
	return kindInfo(k)
}

type kindInfo struct{ l *slog.Logger }

func (k kindInfo) Info(m string)                    { k.l.Info(m, "source", "kind") }
func (k kindInfo) Infof(f string, a ...interface{}) { k.l.Info(fmt.Sprintf(f, a...), "source", "kind") }
func (kindInfo) Enabled() bool                      { return true }

type discard struct{}

func (discard) Info(string)                  {}
func (discard) Infof(string, ...interface{}) {}
func (discard) Enabled() bool                { return false }
