package main

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/yaml"

	"github.com/k8secrets/k8secrets/internal/apitest"
)

// roleScenario is one thing the Job must be able to do under its Role; it
// returns why it failed, or nil.
type roleScenario struct {
	name string
	run  func(cl *cluster, c kubernetes.Interface) error
}

// brokenBad: pods of app=bad that carry an injection never start, so that
// the "rollback" scenario fails its rollout.
func brokenBad(p *corev1.Pod) bool { return p.Labels["app"] == "bad" && hasInjectedVolume(p) }

// roleWorkloads creates what the scenarios work on.
func roleWorkloads(cl *cluster) {
	cl.secret("db-creds")
	cl.deployment("web", "web", 1)
	cl.deployment("bad", "bad", 1)
	cl.statefulSet("db", "db", 2, appsv1.OnDeleteStatefulSetStrategyType)
}

// roleScenarios run in order, the quick ones first. The rollback outlasts
// lock.RenewDeadline, so that the Lease must be renewed (update) on the way.
var roleScenarios = []roleScenario{
	{"inject a Deployment", func(cl *cluster, c kubernetes.Interface) error {
		if r := cl.jobAs(cl.ctx, c, injectArgs("app=web", "db-creds")...); r.code != 0 {
			return fmt.Errorf("exit %d: %v", r.code, r.err)
		}
		if len(cl.events("Injected")) == 0 {
			return fmt.Errorf("no Injected event")
		}
		return noLeases(cl)
	}},
	{"status", func(cl *cluster, c kubernetes.Interface) error {
		r := cl.jobAs(cl.ctx, c, "status", "--secret", "db-creds")
		if r.code != 0 || !strings.Contains(r.out, "web") {
			return fmt.Errorf("exit %d (%v), report:\n%s", r.code, r.err, r.out)
		}
		return nil
	}},
	{"inject an OnDelete StatefulSet", func(cl *cluster, c kubernetes.Interface) error {
		if r := cl.jobAs(cl.ctx, c, injectArgs("app=db", "db-creds")...); r.code != 0 {
			return fmt.Errorf("exit %d: %v", r.code, r.err)
		}
		for _, p := range cl.pods("db") {
			if !hasInjectedVolume(&p) {
				return fmt.Errorf("pod %s not replaced at the injected revision", p.Name)
			}
		}
		return noLeases(cl)
	}},
	{"remove", func(cl *cluster, c kubernetes.Interface) error {
		if r := cl.jobAs(cl.ctx, c, "remove", "-l", "app=web", "--secret", "db-creds"); r.code != 0 {
			return fmt.Errorf("exit %d: %v", r.code, r.err)
		}
		d, err := cl.c.AppsV1().Deployments(cl.ns).Get(cl.ctx, "web", metav1.GetOptions{})
		if err != nil || hasInjectedVolume(&corev1.Pod{Spec: d.Spec.Template.Spec}) {
			return fmt.Errorf("deployment web still injected (%v)", err)
		}
		return noLeases(cl)
	}},
	{"roll back a failed rollout", func(cl *cluster, c kubernetes.Interface) error {
		r := cl.jobAs(cl.ctx, c, injectArgs("app=bad", "db-creds", "--timeout", "20s")...)
		if r.code != 5 {
			return fmt.Errorf("exit %d (%v); want 5", r.code, r.err)
		}
		if len(cl.events("RolledBack")) == 0 {
			return fmt.Errorf("no RolledBack event")
		}
		return noLeases(cl)
	}},
}

func noLeases(cl *cluster) error {
	l, err := cl.c.CoordinationV1().Leases(cl.ns).List(cl.ctx, metav1.ListOptions{})
	if err != nil || len(l.Items) > 0 {
		return fmt.Errorf("leases left behind: %d (%v)", len(l.Items), err)
	}
	return nil
}

// notExercised names the verbs of the shipped Role that these scenarios do
// not reach; none since the rollback became a server-side apply (no
// update) that reads managedFields with a get.
var notExercised = map[string]bool{}

func loadRole(t *testing.T, file string) rbacv1.Role {
	t.Helper()
	raw, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var role rbacv1.Role
	if err := yaml.UnmarshalStrict(raw, &role); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	return role
}

// asRole binds role (as mutated) to a fresh user in cl's namespace and
// returns that user's client once RBAC has taken effect.
func asRole(t *testing.T, cl *cluster, role rbacv1.Role, user string) kubernetes.Interface {
	t.Helper()
	// Ready when a grant of the role is visible to the user.
	var probe *rbacv1.PolicyRule
	for i := range role.Rules {
		if len(role.Rules[i].ResourceNames) == 0 && len(role.Rules[i].Verbs) > 0 {
			probe = &role.Rules[i]
			break
		}
	}
	return cl.bindRole(apitest.Shared(t), "../manifests/base/role.yaml", user, func(r *rbacv1.Role) { *r = role }, func(ctx context.Context, c kubernetes.Interface) error {
		ok, err := canI(ctx, c, probe.Verbs[0], probe.APIGroups[0], probe.Resources[0], cl.ns)
		if err == nil && !ok {
			err = fmt.Errorf("not yet")
		}
		return err
	})
}

// The shipped Role is enough for every scenario, and no more: removing any
// one verb of it makes one of them fail (except the verbs in notExercised,
// logged).
func TestAPIShippedRoleEnoughAndNoMore(t *testing.T) {
	shipped := loadRole(t, "../manifests/base/role.yaml")
	shipped.Rules[0].ResourceNames = []string{"db-creds"} // as the secret-access component does

	t.Run("shipped", func(t *testing.T) {
		cl := newCluster(t, brokenBad)
		roleWorkloads(cl)
		c := asRole(t, cl, shipped, "k8secrets-job")
		for _, s := range roleScenarios {
			if err := s.run(cl, c); err != nil {
				t.Errorf("%s under the shipped Role: %v", s.name, err)
			}
		}
	})
	if t.Failed() {
		return
	}

	type mutation struct {
		key  string
		role rbacv1.Role
	}
	var muts []mutation
	for i, rule := range shipped.Rules {
		for _, v := range apitest.VerbGroups(rule.Verbs) {
			m := *shipped.DeepCopy()
			m.Rules[i].Verbs = slices.DeleteFunc(slices.Clone(rule.Verbs), func(x string) bool { return slices.Contains(v, x) })
			if len(m.Rules[i].Verbs) == 0 {
				m.Rules = slices.Delete(m.Rules, i, i+1)
			}
			group := rule.APIGroups[0]
			if group == "" {
				group = "core"
			}
			muts = append(muts, mutation{fmt.Sprintf("%s/%s:%s", group, strings.Join(rule.Resources, ","), strings.Join(v, "+")), m})
		}
	}
	var mu sync.Mutex
	var unneeded []string
	for n, m := range muts {
		t.Run(m.key, func(t *testing.T) {
			cl := newCluster(t, brokenBad)
			roleWorkloads(cl)
			c := asRole(t, cl, m.role, fmt.Sprintf("k8secrets-job-%d", n))
			for _, s := range roleScenarios {
				if err := s.run(cl, c); err != nil {
					t.Logf("without %s: %s fails: %.300v", m.key, s.name, err)
					return
				}
			}
			if notExercised[m.key] {
				t.Logf("without %s every scenario passes: it is used only by a path these scenarios do not reach", m.key)
				mu.Lock()
				unneeded = append(unneeded, m.key)
				mu.Unlock()
				return
			}
			t.Errorf("without %s every scenario still passes: the Role grants more than the Job needs", m.key)
		})
	}
	t.Logf("verbs no scenario needed (allowed, see notExercised): %v", unneeded)
}

// The refresh Role is enough for refresh, and each of its verbs is needed.
func TestAPIRefreshRoleEnoughAndNoMore(t *testing.T) {
	shipped := loadRole(t, "../manifests/refresh/role.yaml")
	try := func(t *testing.T, role rbacv1.Role, user string) error {
		cl := newCluster(t, never)
		cl.secret("db-creds")
		cl.deployment("web", "web", 2)
		if r := cl.job(injectArgs("app=web", "db-creds", "--reload", "restart")...); r.code != 0 {
			t.Fatalf("inject: exit %d: %v", r.code, r.err)
		}
		cl.waitDeployment("web")
		// Stand-in agents: a poked pod's app restarts.
		go func() {
			for cl.ctx.Err() == nil {
				time.Sleep(50 * time.Millisecond)
				l, err := cl.c.CoreV1().Pods(cl.ns).List(cl.ctx, metav1.ListOptions{LabelSelector: "app=web"})
				if err != nil {
					continue
				}
				for i := range l.Items {
					p := &l.Items[i]
					if _, poked := p.Annotations["k8secrets.io/refreshed-at"]; poked && len(p.Status.ContainerStatuses) == 0 {
						p.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "app", RestartCount: 1, Ready: true}}
						_, _ = cl.c.CoreV1().Pods(cl.ns).UpdateStatus(cl.ctx, p, metav1.UpdateOptions{})
					}
				}
			}
		}()
		c := cl.bindRole(apitest.Shared(t), "../manifests/refresh/role.yaml", user, func(r *rbacv1.Role) { *r = role }, func(ctx context.Context, c kubernetes.Interface) error {
			ok, err := canI(ctx, c, role.Rules[0].Verbs[0], "", "pods", cl.ns)
			if err == nil && !ok {
				err = fmt.Errorf("not yet")
			}
			return err
		})
		r := cl.jobAs(cl.ctx, c, "refresh", "--secret", "db-creds", "--settle", "20s", "--wait=false")
		if r.code != 0 || strings.Count(r.out, "refreshed, restarted") != 2 {
			return fmt.Errorf("exit %d (%v), report:\n%s", r.code, r.err, r.out)
		}
		return nil
	}
	t.Run("shipped", func(t *testing.T) {
		if err := try(t, shipped, "ci-pipeline"); err != nil {
			t.Errorf("refresh under the shipped Role: %v", err)
		}
	})
	for _, v := range apitest.VerbGroups(shipped.Rules[0].Verbs) {
		name := strings.Join(v, "+")
		t.Run("without "+name, func(t *testing.T) {
			m := *shipped.DeepCopy()
			m.Rules[0].Verbs = slices.DeleteFunc(slices.Clone(m.Rules[0].Verbs), func(x string) bool { return slices.Contains(v, x) })
			if err := try(t, m, "ci-pipeline-"+strings.ReplaceAll(name, "+", "-")); err == nil {
				t.Errorf("refresh passes without pods %s: the Role grants more than refresh needs", name)
			}
		})
	}
}
