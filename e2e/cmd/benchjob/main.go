// Command benchjob measures k8secrets-job at scale (make bench-job): in a kind
// cluster of its own, with kwok simulating the nodes, it creates N
// Deployments of 10 pods and measures
//
//  1. the wall time of `k8secrets-job inject --dry-run` (plan + server-side
//     dry-run of every workload);
//  2. the API requests of a real inject run, by verb and resource, counted
//     by a reverse proxy the Job's kubeconfig points at;
//  3. the peak RSS of the Job process (getrusage of the child);
//  4. the total rollout time of the inject run against `kubectl rollout
//     restart deployment -l bench=k8secrets` followed by `kubectl rollout status` for
//     each Deployment, on the same set in the same run.
//
// The cluster (default k8secrets-bench) is created with the
// controller-manager's and the scheduler's client QPS raised, and deleted at
// the end unless -keep; an existing cluster of that name is reused and kept.
// The report goes to stdout and to -out.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/k8secrets/k8secrets/e2e/cluster"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	o, err := parse(os.Args[1:])
	if err == nil {
		err = run(ctx, o, log)
	}
	if err != nil {
		log.Error(err.Error())
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

// options of one benchmark run.
type options struct {
	N, Replicas, Nodes int
	Cluster            string
	NodeImage          string
	KwokVersion        string
	Job, Kubectl       string
	Out                string
	CacheDir           string
	K8sVersion         string
	Phases             map[string]bool
	MaxParallel        []int
	Reload             string
	Keep               bool
}

func parse(args []string) (options, error) {
	home, _ := os.UserHomeDir()
	o := options{CacheDir: envOr("CACHE_DIR", filepath.Join(home, ".cache", "k8secrets")), K8sVersion: os.Getenv("K8S_VERSION")}
	fs := flag.NewFlagSet("benchjob", flag.ContinueOnError)
	fs.IntVar(&o.N, "n", 1000, "Deployments")
	fs.IntVar(&o.Replicas, "replicas", 10, "pods per Deployment")
	fs.IntVar(&o.Nodes, "nodes", 0, "kwok nodes (0: enough for the pods and a rollout's surge)")
	fs.StringVar(&o.Cluster, "cluster", "k8secrets-bench", "kind cluster name (an existing one is reused and kept)")
	fs.StringVar(&o.NodeImage, "node-image", os.Getenv("KIND_NODE_IMAGE"), "kind node image (default as make cluster picks it)")
	fs.StringVar(&o.KwokVersion, "kwok-version", "v0.8.0", "sigs.k8s.io/kwok version, built from the module proxy")
	fs.StringVar(&o.Job, "job", "bin/k8secrets-job", "k8secrets-job binary")
	fs.StringVar(&o.Kubectl, "kubectl", "kubectl", "kubectl binary")
	fs.StringVar(&o.Out, "out", "", "folder for the report, the Job's reports and logs (default $CACHE_DIR/bench-job/TIME)")
	phases := fs.String("phases", "dryrun,inject,kubectl", "what to measure: dryrun, inject, kubectl, watch (after inject: watch.go)")
	maxParallel := fs.String("max-parallel", "1", "the Job's --max-parallel for the inject phase; a comma-separated list runs inject once per value, with a remove between them")
	fs.StringVar(&o.Reload, "reload", "", "the Job's --reload for the inject phase (default: the Job's, restart; the watch phase's signal-mode figures need signal:SIGHUP)")
	fs.BoolVar(&o.Keep, "keep", false, "keep the cluster")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if o.N < 1 || o.Replicas < 1 {
		return o, fmt.Errorf("-n and -replicas must be positive: %w", flag.ErrHelp)
	}
	o.Phases = map[string]bool{}
	for _, p := range strings.Split(*phases, ",") {
		switch p {
		case "dryrun", "inject", "kubectl", "watch":
			o.Phases[p] = true
		default:
			return o, fmt.Errorf("unknown phase %q: %w", p, flag.ErrHelp)
		}
	}
	for _, v := range strings.Split(*maxParallel, ",") {
		p, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil || p < 1 {
			return o, fmt.Errorf("-max-parallel %q: want positive integers: %w", *maxParallel, flag.ErrHelp)
		}
		o.MaxParallel = append(o.MaxParallel, p)
	}
	if o.Nodes == 0 {
		// Room for every pod plus a Deployment's surge, 1.5 times over.
		o.Nodes = max(2, (o.N*o.Replicas*3/2+kwokPodsPerNode-1)/kwokPodsPerNode)
	}
	if o.Out == "" {
		o.Out = filepath.Join(o.CacheDir, "bench-job", time.Now().UTC().Format("20060102T150405Z"))
	}
	var err error
	for _, p := range []*string{&o.Job, &o.Out} {
		if *p, err = filepath.Abs(*p); err != nil {
			return o, err
		}
	}
	return o, nil
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// The controller-manager and the scheduler at the client QPS kwok's own kind
// clusters use; the default 20 (50 for the scheduler) would make the
// cluster, not the Job, the bottleneck.
const controlPlanePatch = `kind: ClusterConfiguration
controllerManager:
  extraArgs:
    - name: enable-hostpath-provisioner
      value: "true"
    - name: kube-api-qps
      value: "5000"
    - name: kube-api-burst
      value: "10000"
    - name: concurrent-deployment-syncs
      value: "20"
    - name: concurrent-replicaset-syncs
      value: "20"
scheduler:
  extraArgs:
    - name: kube-api-qps
      value: "5000"
    - name: kube-api-burst
      value: "10000"
`

func run(ctx context.Context, o options, log *slog.Logger) error {
	if err := os.MkdirAll(o.Out, 0o755); err != nil {
		return err
	}
	log.Info("benchmark", "deployments", o.N, "replicas", o.Replicas, "kwokNodes", o.Nodes, "cluster", o.Cluster, "out", o.Out, "load", loadavg())
	image, src, err := kwokImage(ctx, o.CacheDir, o.KwokVersion, log)
	if err != nil {
		return err
	}

	co := cluster.Options{Name: o.Cluster, Image: o.NodeImage, KubernetesVersion: o.K8sVersion, CacheDir: o.CacheDir, Logger: log}
	exists, err := cluster.Exists(co)
	if err != nil {
		return err
	}
	var kubeconfig string
	if exists {
		if kubeconfig, err = cluster.WriteKubeconfig(co); err != nil {
			return err
		}
		log.Info("reusing cluster", "name", o.Cluster)
	} else {
		start := time.Now()
		if err := cluster.CreateWithPatches(ctx, co, controlPlanePatch); err != nil {
			return err
		}
		log.Info("cluster created", "seconds", time.Since(start).Seconds())
		if kubeconfig, err = cluster.WriteKubeconfig(co); err != nil {
			return err
		}
		if !o.Keep {
			defer func() {
				if err := cluster.Delete(co); err != nil {
					log.Warn("delete cluster", "name", o.Cluster, "err", err)
				} else {
					log.Info("cluster deleted", "name", o.Cluster)
				}
			}()
		}
	}
	if err := cluster.Load(ctx, co, image); err != nil {
		return err
	}
	rc, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return err
	}
	admin := *rc
	admin.QPS, admin.Burst = 500, 1000
	c, err := kubernetes.NewForConfig(&admin)
	if err != nil {
		return err
	}
	if err := deployKwok(ctx, c, image, src); err != nil {
		return err
	}
	if _, err := kwokNodes(ctx, c, o.Nodes); err != nil {
		return err
	}
	log.Info("kwok ready", "nodes", o.Nodes)

	b := &bench{o: o, c: c, log: log, kubectl: o.Kubectl}
	if err := b.setup(ctx); err != nil {
		return err
	}
	proxy, err := newCounter(rc)
	if err != nil {
		return err
	}
	defer proxy.close()
	b.proxy = proxy
	b.kubeconfig = filepath.Join(o.Out, "proxy.kubeconfig")
	if err := proxy.kubeconfig(b.kubeconfig, namespace); err != nil {
		return err
	}
	err = b.measure(ctx)
	report := b.report.String()
	fmt.Print(report)
	if werr := os.WriteFile(filepath.Join(o.Out, "report.txt"), []byte(report), 0o644); werr != nil {
		log.Warn("write report", "err", werr)
	}
	return err
}
