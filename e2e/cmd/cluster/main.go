// Command cluster creates, loads and deletes the kind cluster of the e2e
// tests (make cluster, make load-images, make cluster-down).
//
//	cluster create             create the cluster unless a ready one exists (recreates a broken one)
//	cluster delete             delete the cluster and its kubeconfig file
//	cluster load IMAGE...      load images from Docker into the nodes
//	cluster kubeconfig         (re)write the kubeconfig file and print its path
//
// Flags and environment: -name (KIND_CLUSTER_NAME), -image (KIND_NODE_IMAGE),
// -kubeconfig (KIND_KUBECONFIG; default $CACHE_DIR/kind-NAME.kubeconfig),
// K8S_VERSION and CACHE_DIR as hack/versions.mk and the Makefile set them.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/k8secrets/k8secrets/e2e/cluster"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	logger := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := run(ctx, os.Args[1:], logger); err != nil {
		logger.Error(err.Error())
		if errors.Is(err, errUsage) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

var errUsage = errors.New("usage: cluster [-name N] [-image I] [-kubeconfig F] create|delete|load IMAGE...|kubeconfig")

func run(ctx context.Context, args []string, logger *slog.Logger) error {
	fs := flag.NewFlagSet("cluster", flag.ContinueOnError)
	o := cluster.Options{Logger: logger, KubernetesVersion: os.Getenv("K8S_VERSION"), CacheDir: os.Getenv("CACHE_DIR")}
	fs.StringVar(&o.Name, "name", envOr("KIND_CLUSTER_NAME", cluster.DefaultName), "kind cluster name")
	fs.StringVar(&o.Image, "image", os.Getenv("KIND_NODE_IMAGE"), "node image (default: stock kindest/node if present, else k8secrets/node:$K8S_VERSION)")
	fs.StringVar(&o.Kubeconfig, "kubeconfig", os.Getenv("KIND_KUBECONFIG"), "kubeconfig file to write (default $CACHE_DIR/kind-NAME.kubeconfig)")
	fs.DurationVar(&o.SyncFrequency, "kubelet-sync-frequency", 0, "kubelet syncFrequency (0 keeps the default 1m)")
	if err := fs.Parse(args); err != nil {
		return errUsage
	}
	if fs.NArg() == 0 {
		return errUsage
	}
	switch cmd, rest := fs.Arg(0), fs.Args()[1:]; cmd {
	case "create":
		_, err := cluster.Ensure(ctx, o)
		return err
	case "delete":
		return cluster.Delete(o)
	case "load":
		if len(rest) == 0 {
			return errUsage
		}
		return cluster.Load(ctx, o, rest...)
	case "kubeconfig":
		path, err := cluster.WriteKubeconfig(o)
		if err != nil {
			return err
		}
		fmt.Println(path)
		return nil
	default:
		return fmt.Errorf("unknown command %q: %w", cmd, errUsage)
	}
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}
