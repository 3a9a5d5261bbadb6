package contentid

import (
	"strings"
	"testing"
)

func TestOf(t *testing.T) {
	key, err := NewKey()
	if err != nil {
		t.Fatal(err)
	}
	other, _ := NewKey()
	files := map[string][]byte{"password": []byte("hunter2"), "user": []byte("app")}
	a, err := Of(key, files)
	if err != nil {
		t.Fatal(err)
	}
	if len(a) != 64 || strings.Contains(a, "hunter2") {
		t.Fatalf("Of = %q; want 64 hex characters", a)
	}
	same, _ := Of(key, map[string][]byte{"user": []byte("app"), "password": []byte("hunter2")})
	if same != a {
		t.Errorf("Of depends on map order: %s, %s", a, same)
	}
	for name, f := range map[string]map[string][]byte{
		"another value":            {"password": []byte("hunter3"), "user": []byte("app")},
		"a key less":               {"password": []byte("hunter2")},
		"name and value run on":    {"passwordh": []byte("unter2"), "user": []byte("app")},
		"empty value, moved bytes": {"password": []byte(""), "user": []byte("apphunter2")},
	} {
		if got, _ := Of(key, f); got == a {
			t.Errorf("Of(%s) = Of(original); want different", name)
		}
	}
	if b, _ := Of(other, files); b == a {
		t.Error("two keys give the same identifier")
	}
	for _, bad := range []string{"", "short", strings.Repeat("A", 44)} {
		if _, err := Of(bad, files); err == nil {
			t.Errorf("Of(key %q) = nil error; want ErrKey", bad)
		}
	}
}
