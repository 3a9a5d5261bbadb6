package apitest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

const (
	// readyTimeout bounds each wait at start-up: kube-apiserver's /readyz
	// takes 3 to 10 s on two busy cores, as it bootstraps the RBAC roles.
	readyTimeout = 90 * time.Second
	// attempts covers a free port taken by another test package between
	// our probe and the server's bind.
	attempts = 3
)

// start runs etcd, kube-apiserver and, if asked, kube-controller-manager
// from the binaries in bin, retrying with fresh ports if a port was taken.
func start(bin string, opts ...Option) (*Env, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	var err error
	for range attempts {
		var env *Env
		env, err = startOnce(bin, o)
		if err == nil {
			return env, nil
		}
		if !errors.Is(err, errPortTaken) {
			break
		}
	}
	return nil, err
}

var errPortTaken = errors.New("port taken")

func startOnce(bin string, o options) (_ *Env, err error) {
	for _, name := range []string{"etcd", "kube-apiserver"} {
		if _, err := os.Stat(filepath.Join(bin, name)); err != nil {
			return nil, fmt.Errorf("apitest: %s: %w; run `make test-assets`", name, err)
		}
	}
	sweepStale()
	dir, err := os.MkdirTemp("", dirPrefix)
	if err != nil {
		return nil, fmt.Errorf("apitest: temporary folder: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, ownerFile), []byte(strconv.Itoa(os.Getpid())), 0o600); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("apitest: temporary folder: %w", err)
	}
	var procs []*proc
	stop := func() {
		for i := len(procs) - 1; i >= 0; i-- {
			procs[i].stop()
		}
		os.RemoveAll(dir)
	}
	defer func() {
		if err != nil {
			stop()
		}
	}()

	files, err := writePKI(dir)
	if err != nil {
		return nil, err
	}
	token, err := randomHex(24)
	if err != nil {
		return nil, err
	}
	tokens := filepath.Join(dir, "tokens.csv")
	if err := os.WriteFile(tokens, []byte(token+`,k8secrets-admin,k8secrets-admin,"system:masters"`+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("apitest: write %s: %w", tokens, err)
	}
	ports, err := freePorts(3)
	if err != nil {
		return nil, err
	}
	etcdURL := "http://127.0.0.1:" + strconv.Itoa(ports[0])
	peerURL := "http://127.0.0.1:" + strconv.Itoa(ports[1])
	host := "https://127.0.0.1:" + strconv.Itoa(ports[2])

	etcd, err := startProc(dir, bin, "etcd",
		"--name=default",
		"--data-dir="+filepath.Join(dir, "etcd"),
		"--listen-client-urls="+etcdURL,
		"--advertise-client-urls="+etcdURL,
		"--listen-peer-urls="+peerURL,
		"--initial-advertise-peer-urls="+peerURL,
		"--initial-cluster=default="+peerURL,
		// Test data need not survive a crash; fsync costs seconds.
		"--unsafe-no-fsync=true",
		"--log-level=warn",
	)
	if err != nil {
		return nil, err
	}
	procs = append(procs, etcd)
	if err := waitHTTP(etcd, etcdURL+"/health"); err != nil {
		return nil, err
	}

	args := []string{
		"--etcd-servers=" + etcdURL,
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(ports[2]),
		"--cert-dir=" + filepath.Join(dir, "certs"),
		"--tls-cert-file=" + files.serverCert,
		"--tls-private-key-file=" + files.serverKey,
		"--client-ca-file=" + files.caCert,
		"--token-auth-file=" + tokens,
		"--authorization-mode=RBAC",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + files.saKey,
		"--service-account-signing-key-file=" + files.saKey,
		"--service-cluster-ip-range=10.0.0.0/24",
		// The loopback address is no valid endpoint of the kubernetes
		// Service, and no test reaches the server through it.
		"--endpoint-reconciler-type=none",
		"--allow-privileged=true",
	}
	args = append(args, o.apiServerArgs...)
	apiserver, err := startProc(dir, bin, "kube-apiserver", args...)
	if err != nil {
		return nil, err
	}
	procs = append(procs, apiserver)

	cfg := &rest.Config{
		Host:            host,
		BearerToken:     token,
		TLSClientConfig: rest.TLSClientConfig{CAFile: files.caCert},
		UserAgent:       "k8secrets-apitest",
		// Tests create many objects quickly; client-side throttling would
		// only slow them down.
		QPS:   1000,
		Burst: 2000,
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("apitest: client for %s: %w", host, err)
	}
	if err := waitReady(apiserver, client); err != nil {
		return nil, err
	}
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := writeKubeconfig(kubeconfig, cfg, files.caCert); err != nil {
		return nil, err
	}

	if o.controllerManager {
		kcm, err := startProc(dir, bin, "kube-controller-manager",
			"--kubeconfig="+kubeconfig,
			"--controllers=deployment-controller,replicaset-controller,statefulset-controller,daemonset-controller,garbage-collector-controller,resourcequota-controller,disruption-controller,serviceaccount-controller,serviceaccount-token-controller,namespace-controller",
			"--service-account-private-key-file="+files.saKey,
			"--root-ca-file="+files.caCert,
			"--leader-elect=false",
			"--bind-address=127.0.0.1",
			// No serving endpoint: nothing scrapes it, and a port less
			// to collide on.
			"--secure-port=0",
			"--use-service-account-credentials=false",
		)
		if err != nil {
			return nil, err
		}
		procs = append(procs, kcm)
		// The service account controller creates default/default: proof
		// that the controllers run.
		if err := waitDefaultServiceAccount(kcm, client); err != nil {
			return nil, err
		}
	}

	return &Env{
		Config:     cfg,
		Client:     client,
		Kubeconfig: kubeconfig,
		stop:       stop,
	}, nil
}

const (
	dirPrefix = "k8secrets-apitest-"
	ownerFile = "owner.pid"
)

// sweepStale removes the folders of servers whose test binary was killed
// (a test timeout, SIGKILL): the kernel killed the servers with it
// (Pdeathsig), but nothing removed their etcd data, about 120 MB each.
func sweepStale() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), dirPrefix+"*"))
	for _, dir := range dirs {
		b, err := os.ReadFile(filepath.Join(dir, ownerFile))
		if err != nil {
			continue // being created, or not ours
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || pid <= 0 {
			continue
		}
		if errors.Is(syscall.Kill(pid, 0), syscall.ESRCH) {
			os.RemoveAll(dir)
		}
	}
}

// freePorts returns n distinct loopback ports that were free a moment ago.
func freePorts(n int) ([]int, error) {
	var ports []int
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("apitest: free port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func randomHex(n int) (string, error) {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("apitest: random token: %w", err)
	}
	return hex.EncodeToString(b), nil
}

// waitHTTP polls url until it answers 200 or p exits.
func waitHTTP(p *proc, url string) error {
	client := &http.Client{Timeout: 2 * time.Second}
	return p.waitFor(func(ctx context.Context) (bool, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return false, err
		}
		resp, err := client.Do(req)
		if err != nil {
			return false, nil
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, nil
	})
}

func waitReady(p *proc, client kubernetes.Interface) error {
	return p.waitFor(func(ctx context.Context) (bool, error) {
		var code int
		client.Discovery().RESTClient().Get().AbsPath("/readyz").Do(ctx).StatusCode(&code)
		return code == http.StatusOK, nil
	})
}

func waitDefaultServiceAccount(p *proc, client kubernetes.Interface) error {
	return p.waitFor(func(ctx context.Context) (bool, error) {
		_, err := client.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return false, nil
		}
		return err == nil, nil
	})
}

// waitFor calls ok every 100 ms until it returns true, p exits (an error
// with the end of its log) or readyTimeout passes.
func (p *proc) waitFor(ok func(context.Context) (bool, error)) error {
	deadline := time.Now().Add(readyTimeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		done, err := ok(ctx)
		cancel()
		if err != nil {
			return fmt.Errorf("apitest: wait for %s: %w", p.name, err)
		}
		if done {
			return nil
		}
		select {
		case <-p.done:
			tail := p.tail(30)
			err := fmt.Errorf("apitest: %s exited at start-up (%v); last lines of %s:\n%s", p.name, p.err, p.log, tail)
			if strings.Contains(tail, "address already in use") {
				err = fmt.Errorf("%w: %w", errPortTaken, err)
			}
			return err
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("apitest: %s not ready after %s; last lines of %s:\n%s", p.name, readyTimeout, p.log, p.tail(30))
		}
	}
}

func writeKubeconfig(path string, cfg *rest.Config, caFile string) error {
	kc := clientcmdapi.NewConfig()
	kc.Clusters["apitest"] = &clientcmdapi.Cluster{Server: cfg.Host, CertificateAuthority: caFile}
	kc.AuthInfos["admin"] = &clientcmdapi.AuthInfo{Token: cfg.BearerToken}
	kc.Contexts["apitest"] = &clientcmdapi.Context{Cluster: "apitest", AuthInfo: "admin", Namespace: "default"}
	kc.CurrentContext = "apitest"
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		return fmt.Errorf("apitest: write kubeconfig %s: %w", path, err)
	}
	return nil
}
