package watch

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/k8secrets/k8secrets/internal/apitest"
	authorizationv1 "k8s.io/api/authorization/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/yaml"
)

const shippedRole = "../../../manifests/watch/role.yaml"

func loadRole(t *testing.T) rbacv1.Role {
	t.Helper()
	raw, err := os.ReadFile(shippedRole)
	if err != nil {
		t.Fatal(err)
	}
	var role rbacv1.Role
	if err := yaml.UnmarshalStrict(raw, &role); err != nil {
		t.Fatalf("%s: %v", shippedRole, err)
	}
	return role
}

// bindRole grants role to user in f's namespace and returns the user's
// client once RBAC has taken effect.
func (f *fx) bindRole(role rbacv1.Role, user string) kubernetes.Interface {
	f.t.Helper()
	if _, err := f.c.RbacV1().Roles(f.ns).Create(f.ctx, &role, metav1.CreateOptions{}); err != nil {
		f.t.Fatal(err)
	}
	_, err := f.c.RbacV1().RoleBindings(f.ns).Create(f.ctx, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: role.Name},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: role.Name},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: user}},
	}, metav1.CreateOptions{})
	if err != nil {
		f.t.Fatal(err)
	}
	c, err := kubernetes.NewForConfig(f.api.As(user))
	if err != nil {
		f.t.Fatal(err)
	}
	probe := role.Rules[len(role.Rules)-1]
	err = wait.PollUntilContextTimeout(f.ctx, 100*time.Millisecond, 10*time.Second, true, func(ctx context.Context) (bool, error) {
		r, err := c.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, &authorizationv1.SelfSubjectAccessReview{
			Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &authorizationv1.ResourceAttributes{
				Namespace: f.ns, Verb: probe.Verbs[0], Group: probe.APIGroups[0], Resource: probe.Resources[0]}}}, metav1.CreateOptions{})
		return err == nil && r.Status.Allowed, nil
	})
	if err != nil {
		f.t.Fatalf("role for %s never took effect: %v", user, err)
	}
	return c
}

// rotateUnder runs the watch as client through what it does: lead, record
// a baseline, rotate a change with its Events, stop and release the Lease.
// It returns what failed.
func (f *fx) rotateUnder(client kubernetes.Interface, id string) error {
	logs := &syncBuffer{}
	ctx, cancel := context.WithCancel(f.ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, client, Election{Namespace: f.ns, Name: "k8secrets-watch", Identity: id}, "", f.options(id, logs))
	}()
	within := func(what string, cond func() bool) error {
		err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 15*time.Second, true, func(context.Context) (bool, error) { return cond(), nil })
		if err != nil {
			return fmt.Errorf("%s: not within 15 s; logs:\n%.1500s", what, logs.String())
		}
		return nil
	}
	if err := within("lead", func() bool { return f.holder() == id }); err != nil {
		return err
	}
	if err := within("record the baseline", func() bool { return f.recorded("web") != "" }); err != nil {
		return err
	}
	rv := f.setSecret("db", "v1", nil)
	if err := within("rotate and verify", func() bool {
		p := f.refreshedAt()
		return f.recorded("web") == "rv:"+rv && len(f.events(ReasonVerified)) == 2 && p["web-0"] != "" && p["web-1"] != ""
	}); err != nil {
		return err
	}
	cancel()
	if err := <-done; err != nil {
		return fmt.Errorf("stop: %v", err)
	}
	if h := f.holder(); h != "" {
		return fmt.Errorf("lease not released on stop: holder %q", h)
	}
	return nil
}

// The shipped Role is enough for the watch, also with its Secrets narrowed
// to the injected ones by resourceNames (the per-name informers allow it),
// and no more: removing any one verb (list and watch as a pair) makes the
// watch fail.
func TestAPIWatchRoleEnoughAndNoMore(t *testing.T) {
	shipped := loadRole(t)
	t.Run("shipped", func(t *testing.T) {
		f := newFx(t)
		if err := f.rotateUnder(f.bindRole(shipped, "watch-shipped"), "watch-shipped"); err != nil {
			t.Errorf("under the shipped Role: %v", err)
		}
	})
	t.Run("secrets narrowed by resourceNames", func(t *testing.T) {
		f := newFx(t)
		role := *shipped.DeepCopy()
		role.Rules[0].ResourceNames = []string{"db"}
		if err := f.rotateUnder(f.bindRole(role, "watch-named"), "watch-named"); err != nil {
			t.Errorf("under the Role with resourceNames [db]: %v", err)
		}
	})
	if t.Failed() {
		return
	}
	for i, rule := range shipped.Rules {
		for _, verbs := range apitest.VerbGroups(rule.Verbs) {
			m := *shipped.DeepCopy()
			m.Rules[i].Verbs = slices.DeleteFunc(slices.Clone(rule.Verbs), func(v string) bool { return slices.Contains(verbs, v) })
			if len(m.Rules[i].Verbs) == 0 {
				m.Rules = slices.Delete(m.Rules, i, i+1)
			}
			group := rule.APIGroups[0]
			if group == "" {
				group = "core"
			}
			key := fmt.Sprintf("%s/%s:%s", group, strings.Join(rule.Resources, ","), strings.Join(verbs, "+"))
			user := fmt.Sprintf("watch-%d-%s", i, strings.Join(verbs, "-"))
			t.Run("without "+key, func(t *testing.T) {
				t.Parallel()
				f := newFx(t)
				err := f.rotateUnder(f.bindRole(m, user), user)
				if err == nil {
					t.Errorf("without %s the watch still works: the Role grants more than it needs", key)
					return
				}
				t.Logf("without %s: %s", key, strings.SplitN(err.Error(), "\n", 2)[0])
			})
		}
	}
}
