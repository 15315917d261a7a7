// SPDX-License-Identifier: GPL-2.0
/*
 * klp-rs generic init. Builds klp_patch, klp_object and klp_func from the tables that the
 * Rust object carries (klp_rs_abi.h), registers the klp-rs klp_state whose data points to
 * those tables, and enables the patch. Nothing here is patch-specific: the module's settings
 * come from klp_rs_modinfo.h, which cargo klp writes.
 *
 * The kernel structures live here, compiled against the target kernel's headers, because
 * their layout depends on its config. Every hook of every object goes to the Rust
 * dispatcher, which runs the replace planner. vmlinux is always the first object, even when
 * the patch changes nothing there: the dispatcher does its work in vmlinux's hooks, which
 * the kernel calls first and always calls.
 *
 * On a kernel with the livepatch-core series for callback sets (KLP_RS_NATIVE_SETS, which
 * cargo klp defines when the target's livepatch.h has struct klp_callback_set), the core
 * runs the sets itself: each table set becomes a klp_callback_set on its object, owning its
 * shadow types, and the dispatcher is never called.
 */
#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/module.h>
#include <linux/preempt.h>
#include <linux/rcupdate.h>
#include <linux/sched.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/string.h>
#include <linux/uaccess.h>

#include "klp_rs_abi.h"
#include "klp_rs_modinfo.h"

/* Defined by the link script at the start of .klp_rs.patch. */
extern const struct klp_rs_patch_header klp_rs_header;

/* The Rust side: the dispatcher, and the helpers it calls. */
int klp_rs_dispatch(const struct klp_rs_patch_header *header, unsigned int hook, const char *object);
unsigned int klp_rs_format_version(void);
void klp_rs_release(void);
void klp_rs_log(const char *msg, size_t len);
const void *klp_rs_current(void);
void *klp_rs_alloc(size_t size);
void klp_rs_free(void *ptr);
void *klp_rs_shadow_alloc(void *obj, unsigned long id, size_t size, klp_shadow_ctor_t ctor, void *data,
			  int or_get, unsigned int gfp);
size_t klp_rs_shadow_free_all(unsigned long id, klp_shadow_dtor_t dtor);
int klp_rs_prev_header(const struct klp_rs_patch_header **prev);
int klp_rs_prev_name(char *buf, size_t len);
int klp_rs_replaces(void);
int klp_rs_pin_begin(void);
int klp_rs_pin(const char *name);
int klp_rs_pinned(const char *name);
void klp_rs_unpin(const char *name);
void klp_rs_unpin_all(void);
void klp_rs_rcu_read_lock(void);
void klp_rs_rcu_read_unlock(void);
void klp_rs_spin_lock(spinlock_t *lock);
void klp_rs_spin_unlock(spinlock_t *lock);
unsigned long klp_rs_spin_lock_irqsave(spinlock_t *lock);
void klp_rs_spin_unlock_irqrestore(spinlock_t *lock, unsigned long flags);

#define KLP_RS_FOR_EACH(type, e, table)                                              \
	for (e = (const type *)(table).start; (const void *)e < (table).end;        \
	     e = (const type *)((const char *)e + e->size))

/*
 * Every entry of a table this init walks must hold at least the fields it reads (up to
 * `last`) and fit in the table: a zero or short size would loop forever or read beyond.
 */
#define KLP_RS_CHECK_TABLE(type, last, table, what)                                   \
	({                                                                             \
		const char *p_ = (table).start, *end_ = (table).end;                   \
		int ok_ = p_ <= end_;                                                  \
		while (ok_ && p_ < end_) {                                             \
			size_t left_ = end_ - p_;                                      \
			unsigned int size_;                                            \
			if (left_ < sizeof(unsigned int)) {                            \
				ok_ = 0;                                               \
				break;                                                 \
			}                                                              \
			size_ = ((const type *)p_)->size;                              \
			if (size_ < offsetofend(type, last) || size_ > left_ ||        \
			    size_ % sizeof(void *)) {                                  \
				pr_err("%s: klp-rs %s table: entry at offset %zu has size %u\n", \
				       KBUILD_MODNAME, what,                           \
				       (size_t)(p_ - (const char *)(table).start), size_); \
				ok_ = 0;                                               \
				break;                                                 \
			}                                                              \
			p_ += size_;                                                   \
		}                                                                      \
		ok_;                                                                   \
	})

static struct klp_patch patch;
/* Ours; the stacking one when this patch does not replace (see klp_rs_init); the end. */
static struct klp_state states[3];
static const char **object_names;

/*
 * Target modules pinned (try_module_get) for the transition in flight. Room for every static
 * object is made at init, so that a disable (whose callbacks cannot fail) never allocates;
 * a replace grows it for the nop objects in its pre_patch, which can fail cleanly.
 */
struct klp_rs_pin {
	struct module *mod;
	/* Whether we hold a reference: not for a module already going when we counted it. */
	bool ref;
};
static struct klp_rs_pin *pinned;
static size_t npinned, pinned_room;

#ifdef KLP_RS_ALLOC_FAULTS
/* Test builds: what the allocator has handed out and not had back, reported when an init fails. */
static atomic_t live_allocs = ATOMIC_INIT(0);
#endif

static bool is_vmlinux(const char *name)
{
	return !strcmp(name, "vmlinux");
}

static const char *object_name(struct klp_object *obj)
{
	return obj->name ? obj->name : "vmlinux";
}

/*
 * The task running our dispatcher: livepatch callbacks run in process context under
 * klp_mutex, one at a time, and may sleep, so the runtime's and the hooks' allocations from
 * this task use GFP_KERNEL (klp_rs_alloc). Any other task is patched code, whose context we
 * cannot know: GFP_ATOMIC.
 */
static struct task_struct *dispatching;

static int dispatch(unsigned int hook, struct klp_object *obj)
{
	int ret;

	WRITE_ONCE(dispatching, current);
	ret = klp_rs_dispatch(&klp_rs_header, hook, object_name(obj));
	WRITE_ONCE(dispatching, NULL);
	return ret;
}

static int klp_rs_pre_patch(struct klp_object *obj)
{
	return dispatch(KLP_RS_HOOK_PRE_PATCH, obj);
}

static void klp_rs_post_patch(struct klp_object *obj)
{
	dispatch(KLP_RS_HOOK_POST_PATCH, obj);
}

static void klp_rs_pre_unpatch(struct klp_object *obj)
{
	dispatch(KLP_RS_HOOK_PRE_UNPATCH, obj);
}

static void klp_rs_post_unpatch(struct klp_object *obj)
{
	dispatch(KLP_RS_HOOK_POST_UNPATCH, obj);
}

#ifdef KLP_RS_NATIVE_SETS
/*
 * The kernel calls a set's callbacks with the set, whose data is its table entry. Each call
 * logs the same line the dispatcher logs for the step (the hook's own output follows), so
 * that the two paths can be compared step for step.
 */
static void native_step(struct klp_object *obj, const struct klp_rs_set *s, const char *hook)
{
	pr_info("%s: %s: set %u %s %s\n", KBUILD_MODNAME, klp_rs_header.name, s->id,
		object_name(obj), hook);
}

static int klp_rs_set_pre_patch(struct klp_object *obj, struct klp_callback_set *set)
{
	const struct klp_rs_set *s = set->data;
	int ret;

	if (!s->pre_patch)
		return 0;
	native_step(obj, s, "pre_patch");
	WRITE_ONCE(dispatching, current);
	ret = s->pre_patch(object_name(obj));
	WRITE_ONCE(dispatching, NULL);
	if (!ret)
		return 0;
	/* Not a negative errno (a positive value, INT_MIN): -EINVAL, as the dispatcher does. */
	if (ret > 0 || ret < -MAX_ERRNO)
		ret = -EINVAL;
	pr_info("%s: %s: set %u %s pre_patch failed: %d\n", KBUILD_MODNAME, klp_rs_header.name,
		s->id, object_name(obj), -ret);
	return ret;
}

#define KLP_RS_SET_HOOK(hook)                                                             \
	static void klp_rs_set_##hook(struct klp_object *obj, struct klp_callback_set *set) \
	{                                                                                 \
		const struct klp_rs_set *s = set->data;                                   \
                                                                                          \
		if (!s->hook)                                                             \
			return;                                                           \
		native_step(obj, s, #hook);                                               \
		WRITE_ONCE(dispatching, current);                                         \
		s->hook(object_name(obj));                                                \
		WRITE_ONCE(dispatching, NULL);                                            \
	}
KLP_RS_SET_HOOK(post_patch)
KLP_RS_SET_HOOK(pre_unpatch)
KLP_RS_SET_HOOK(post_unpatch)

/*
 * The callback sets of the object `name` (NULL when it has none): an array ending in an
 * entry with id 0, each set owning the shadow types the tables give it, under the ids the
 * runtime hands klp_shadow_* (KLP_RS_SHADOW_NAMESPACE | id).
 */
static struct klp_callback_set *native_sets(const struct klp_rs_patch_header *h, const char *name)
{
	const struct klp_rs_shadow *e;
	const struct klp_rs_set *s;
	struct klp_callback_set *sets;
	size_t n = 0, i = 0, j;

	KLP_RS_FOR_EACH(struct klp_rs_set, s, h->sets)
		n += !strcmp(s->object, name);
	if (!n)
		return NULL;
	sets = kcalloc(n + 1, sizeof(*sets), GFP_KERNEL);
	if (!sets)
		return ERR_PTR(-ENOMEM);
	KLP_RS_FOR_EACH(struct klp_rs_set, s, h->sets) {
		struct klp_callback_set *set;
		size_t ntypes = 0;

		if (strcmp(s->object, name))
			continue;
		set = &sets[i++];
		set->id = s->id;
		set->data = (void *)s;
		set->callbacks.pre_patch = klp_rs_set_pre_patch;
		set->callbacks.post_patch = klp_rs_set_post_patch;
		set->callbacks.pre_unpatch = klp_rs_set_pre_unpatch;
		set->callbacks.post_unpatch = klp_rs_set_post_unpatch;
		KLP_RS_FOR_EACH(struct klp_rs_shadow, e, h->shadows)
			ntypes += e->owner == s->id;
		if (!ntypes)
			continue;
		set->shadow_types = kcalloc(ntypes + 1, sizeof(*set->shadow_types), GFP_KERNEL);
		if (!set->shadow_types)
			goto nomem;
		j = 0;
		KLP_RS_FOR_EACH(struct klp_rs_shadow, e, h->shadows) {
			if (e->owner != s->id)
				continue;
			set->shadow_types[j].id = KLP_RS_SHADOW_NAMESPACE | (e->id & KLP_RS_SHADOW_ID_MAX);
			set->shadow_types[j].dtor = e->dtor;
			j++;
		}
	}
	return sets;
nomem:
	for (i = 0; i < n; i++)
		kfree(sets[i].shadow_types);
	kfree(sets);
	return ERR_PTR(-ENOMEM);
}

/*
 * A patch that stacks (replace = false) on a klp-rs patch whose module runs its sets itself
 * would share the shadow namespace with it unseen: neither knows the other's sets. The kernel
 * refuses a replace between the two kinds (their states differ) but lets a stacking patch
 * through, so vmlinux's pre_patch refuses it. The kernel has run our sets' pre_patch by then
 * (a set's callback comes before its object's), and undoes them.
 */
static int klp_rs_native_pre_patch(struct klp_object *obj)
{
	if (!klp_get_prev_state(KLP_RS_STATE_ID))
		return 0;
	pr_err("%s: klp-rs: %s cannot stack on an enabled klp-rs patch built for a stock kernel (whose module runs its callback sets itself): disable that one first\n",
	       KBUILD_MODNAME, klp_rs_header.name);
	return -EINVAL;
}

static void free_native_sets(struct klp_callback_set *sets)
{
	struct klp_callback_set *set;

	if (!sets)
		return;
	for (set = sets; set->id; set++)
		kfree(set->shadow_types);
	kfree(sets);
}
#endif

static size_t add_object(const char *name, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		if (!strcmp(object_names[i], name))
			return n;
	object_names[n] = name;
	return n + 1;
}

static void free_objects(void)
{
	struct klp_object *o;

	if (patch.objs)
		for (o = patch.objs; o->funcs; o++) {
			kfree(o->funcs);
#ifdef KLP_RS_NATIVE_SETS
			free_native_sets(o->callback_sets);
#endif
		}
	kfree(patch.objs);
	patch.objs = NULL;
	kfree(object_names);
	object_names = NULL;
	/*
	 * Every transition unpins at its end. A pin left here would be a bug; putting it now
	 * could touch a module that has gone meanwhile, so it is only reported.
	 */
	WARN_ON(npinned);
	npinned = 0;
	kfree(pinned);
	pinned = NULL;
	pinned_room = 0;
}

static int __init klp_rs_init(void)
{
	const struct klp_rs_patch_header *h = &klp_rs_header;
	const struct klp_rs_func *f;
	const struct klp_rs_set *s;
	size_t nfuncs = 0, nsets = 0, nobjs, i, j;
	int ret;

	/*
	 * The tables and the runtime come from one build of klp-runtime; this init reads the
	 * leading fields of each entry, which every format version keeps.
	 */
	if (memcmp(h->magic, "KLPRSPT", 8) || h->format_version != klp_rs_format_version()) {
		pr_err("%s: klp-rs tables of format %u, runtime of format %u\n", KBUILD_MODNAME,
		       h->format_version, klp_rs_format_version());
		return -EINVAL;
	}
	if (!KLP_RS_CHECK_TABLE(struct klp_rs_func, new_func, h->funcs, "function") ||
	    !KLP_RS_CHECK_TABLE(struct klp_rs_set, post_unpatch, h->sets, "callback set"))
		return -EINVAL;
#ifdef KLP_RS_NATIVE_SETS
	/* Read here, not by the runtime's reader, on this path. */
	if (!KLP_RS_CHECK_TABLE(struct klp_rs_shadow, dtor, h->shadows, "shadow"))
		return -EINVAL;
#endif
	KLP_RS_FOR_EACH(struct klp_rs_func, f, h->funcs)
		nfuncs++;
	KLP_RS_FOR_EACH(struct klp_rs_set, s, h->sets)
		nsets++;

	object_names = kcalloc(1 + nfuncs + nsets, sizeof(*object_names), GFP_KERNEL);
	if (!object_names)
		return -ENOMEM;
	nobjs = add_object("vmlinux", 0);
	KLP_RS_FOR_EACH(struct klp_rs_func, f, h->funcs)
		nobjs = add_object(f->object, nobjs);
	KLP_RS_FOR_EACH(struct klp_rs_set, s, h->sets)
		nobjs = add_object(s->object, nobjs);

	patch.objs = kcalloc(nobjs + 1, sizeof(*patch.objs), GFP_KERNEL);
	if (!patch.objs)
		goto nomem;
	pinned = kcalloc(nobjs, sizeof(*pinned), GFP_KERNEL);
	if (!pinned)
		goto nomem;
	pinned_room = nobjs;
	for (i = 0; i < nobjs; i++) {
		struct klp_object *o = &patch.objs[i];
		size_t n = 0;

		KLP_RS_FOR_EACH(struct klp_rs_func, f, h->funcs)
			n += !strcmp(f->object, object_names[i]);
		o->funcs = kcalloc(n + 1, sizeof(*o->funcs), GFP_KERNEL);
		if (!o->funcs)
			goto nomem;
		o->name = is_vmlinux(object_names[i]) ? NULL : object_names[i];
#ifdef KLP_RS_NATIVE_SETS
		o->callback_sets = native_sets(h, object_names[i]);
		if (IS_ERR(o->callback_sets)) {
			o->callback_sets = NULL;
			goto nomem;
		}
		if (!KLP_RS_REPLACE && !o->name)
			o->callbacks.pre_patch = klp_rs_native_pre_patch;
#else
		o->callbacks.pre_patch = klp_rs_pre_patch;
		o->callbacks.post_patch = klp_rs_post_patch;
		o->callbacks.pre_unpatch = klp_rs_pre_unpatch;
		o->callbacks.post_unpatch = klp_rs_post_unpatch;
#endif
		j = 0;
		KLP_RS_FOR_EACH(struct klp_rs_func, f, h->funcs) {
			if (strcmp(f->object, object_names[i]))
				continue;
			o->funcs[j].old_name = f->old_name;
			o->funcs[j].new_func = f->new_func;
			o->funcs[j].old_sympos = f->sympos;
			j++;
		}
	}

	/*
	 * A module whose sets the kernel runs registers a state of its own: the kernel then
	 * refuses a replace between it and a module that dispatches itself, either way
	 * (klp_is_patch_compatible), since each would leave the other's sets to nobody.
	 */
	states[0].id = IS_ENABLED(KLP_RS_NATIVE_SETS) ? KLP_RS_NATIVE_STATE_ID : KLP_RS_STATE_ID;
	states[0].version = KLP_RS_STATE_VERSION;
	states[0].data = (void *)h;
	/*
	 * A patch that stacks (replace = false) also registers the stacking state. A replacing
	 * patch lacks it, so the kernel refuses to load one while this patch is enabled
	 * (klp_is_patch_compatible): it would see only the topmost klp-rs patch's tables
	 * (klp_get_prev_state) and never tear down the patches below.
	 */
	if (!KLP_RS_REPLACE) {
		states[1].id = KLP_RS_STACK_STATE_ID;
		states[1].version = KLP_RS_STATE_VERSION;
	}
	patch.mod = THIS_MODULE;
	patch.states = states;
	patch.replace = KLP_RS_REPLACE;

	ret = klp_enable_patch(&patch);
#ifdef KLP_RS_NATIVE_SETS
	/* The kernel's "not compatible" says no more; -EINVAL has other causes too. */
	if (ret == -EINVAL && KLP_RS_REPLACE)
		pr_err("%s: klp-rs: if a klp-rs patch built for a stock kernel (whose module runs its callback sets itself) is enabled, this one cannot replace it: disable it first\n",
		       KBUILD_MODNAME);
#endif
	if (ret) {
		/*
		 * klp_enable_patch has freed the patch (klp_free_patch_finish waits for it), so
		 * no callback can come any more; module exit will not run after a failed init,
		 * so what the dispatcher read and planned goes now.
		 */
		klp_rs_release();
		free_objects();
#ifdef KLP_RS_ALLOC_FAULTS
		pr_info("%s: klp-rs: test build: %d allocations live after the failed init\n",
			KBUILD_MODNAME, atomic_read(&live_allocs));
#endif
	}
	return ret;
nomem:
	free_objects();
	return -ENOMEM;
}

static void __exit klp_rs_exit(void)
{
	klp_rs_release();
	free_objects();
}

module_init(klp_rs_init);
module_exit(klp_rs_exit);
MODULE_INFO(livepatch, "Y");

/* Helpers for the Rust runtime: whatever depends on the kernel config. */

void klp_rs_log(const char *msg, size_t len)
{
	printk(KERN_INFO KBUILD_MODNAME ": %.*s\n", (int)len, msg);
}

const void *klp_rs_current(void)
{
	return current;
}

/*
 * The kernel's inline locking helpers, for patch code (klp_runtime::bindings): what they
 * expand to depends on the config (PREEMPT_RCU, lockdep, debug spinlocks), so they are
 * compiled here against the target's headers, as Rust-for-Linux's rust/helpers are.
 */
void klp_rs_rcu_read_lock(void)
{
	rcu_read_lock();
}

void klp_rs_rcu_read_unlock(void)
{
	rcu_read_unlock();
}

void klp_rs_spin_lock(spinlock_t *lock)
{
	spin_lock(lock);
}

void klp_rs_spin_unlock(spinlock_t *lock)
{
	spin_unlock(lock);
}

unsigned long klp_rs_spin_lock_irqsave(spinlock_t *lock)
{
	unsigned long flags;

	spin_lock_irqsave(lock, flags);
	return flags;
}

void klp_rs_spin_unlock_irqrestore(spinlock_t *lock, unsigned long flags)
{
	spin_unlock_irqrestore(lock, flags);
}

/*
 * Rust's global allocator. preemptible() alone cannot tell: under PREEMPT_RCU (Debian's
 * PREEMPT_DYNAMIC kernels) it is true inside RCU read-side sections, where patched code may
 * run. So only the dispatching task may sleep (see dispatch()), and there only where
 * preemptible() allows it (without PREEMPT_COUNT it is always false: GFP_ATOMIC).
 */
#ifdef KLP_RS_ALLOC_FAULTS
/*
 * Test builds only (cargo klp build --alloc-faults): the Nth allocation of the runtime from
 * the moment this is set fails, to show that every one is an error, never a panic.
 */
static atomic_t fail_alloc = ATOMIC_INIT(0);
static int fail_alloc_set(const char *val, const struct kernel_param *kp)
{
	int n, ret = kstrtoint(val, 0, &n);

	if (!ret)
		atomic_set(&fail_alloc, n);
	return ret;
}
static int fail_alloc_get(char *buf, const struct kernel_param *kp)
{
	return sprintf(buf, "%d\n", atomic_read(&fail_alloc));
}
static const struct kernel_param_ops fail_alloc_ops = {
	.set = fail_alloc_set,
	.get = fail_alloc_get,
};
module_param_cb(fail_alloc, &fail_alloc_ops, NULL, 0644);
MODULE_PARM_DESC(fail_alloc, "test builds: fail the runtime's Nth allocation from now on (0: none)");
#endif

void *klp_rs_alloc(size_t size)
{
	/*
	 * Only our callbacks may sleep, and only where the kernel says sleeping is allowed: an
	 * interrupt on the dispatching CPU has the same `current`, and a shadow destructor
	 * (Drop) runs under klp_shadow_lock with interrupts off.
	 */
	bool may_sleep = READ_ONCE(dispatching) == current && in_task() && preemptible();

#ifdef KLP_RS_ALLOC_FAULTS
	/* Only the runtime's own allocations count, never patched code's. */
	if (READ_ONCE(dispatching) == current && atomic_read(&fail_alloc) > 0 &&
	    atomic_dec_and_test(&fail_alloc)) {
		pr_info("%s: klp-rs: test build: allocation of %zu bytes failed on purpose\n",
			KBUILD_MODNAME, size);
		return NULL;
	}
#endif
#ifdef KLP_RS_ALLOC_FAULTS
	{
		void *p = kmalloc(size, may_sleep ? GFP_KERNEL : GFP_ATOMIC);

		if (p)
			atomic_inc(&live_allocs);
		return p;
	}
#else
	return kmalloc(size, may_sleep ? GFP_KERNEL : GFP_ATOMIC);
#endif
}

void klp_rs_free(void *ptr)
{
#ifdef KLP_RS_ALLOC_FAULTS
	if (ptr)
		atomic_dec(&live_allocs);
#endif
	kfree(ptr);
}

/* The caller says whether it may sleep (klp_runtime::abi::Gfp). */
void *klp_rs_shadow_alloc(void *obj, unsigned long id, size_t size, klp_shadow_ctor_t ctor, void *data,
			  int or_get, unsigned int gfp)
{
	gfp_t flags = gfp == KLP_RS_GFP_KERNEL ? GFP_KERNEL : GFP_ATOMIC;

	if (or_get)
		return klp_shadow_get_or_alloc(obj, id, size, flags, ctor, data);
	return klp_shadow_alloc(obj, id, size, flags, ctor, data);
}

/*
 * The dispatcher's free, which counts what it freed for its log line. Only the dispatcher
 * calls it, from livepatch callbacks, so under klp_mutex: the globals are never shared by two
 * frees at once. Patched code frees through klp_shadow_free_all with its type's own dtor.
 */
static klp_shadow_dtor_t klp_rs_gc_dtor;
static size_t klp_rs_gc_count;

static void klp_rs_counting_dtor(void *obj, void *shadow_data)
{
	klp_rs_gc_count++;
	if (klp_rs_gc_dtor)
		klp_rs_gc_dtor(obj, shadow_data);
}

size_t klp_rs_shadow_free_all(unsigned long id, klp_shadow_dtor_t dtor)
{
	klp_rs_gc_dtor = dtor;
	klp_rs_gc_count = 0;
	klp_shadow_free_all(id, klp_rs_counting_dtor);
	return klp_rs_gc_count;
}

/*
 * The tables of the topmost klp-rs patch below this one (the one it replaces, or stacks on),
 * through its klp_state: 0 with *prev set (NULL when there is none), or -EINVAL when the
 * state's data is not klp-rs tables (another tool registered our state id). Nothing of the
 * other module's memory is read before its magic has been checked, and that check cannot
 * fault.
 */
int klp_rs_prev_header(const struct klp_rs_patch_header **prev)
{
	struct { char magic[8]; unsigned int format_version; unsigned int size; } head;
	struct klp_state *state = klp_get_prev_state(KLP_RS_STATE_ID);

	*prev = NULL;
	if (!state)
		return 0;
	if (!state->data || copy_from_kernel_nofault(&head, state->data, sizeof(head)) ||
	    memcmp(head.magic, "KLPRSPT", 8) || head.size < sizeof(struct klp_rs_patch_header))
		return -EINVAL;
	*prev = state->data;
	return 0;
}

/*
 * The name of the patch below, for a message when its tables cannot be read: copied without
 * faulting, as everything past the checked magic may be garbage. 0, or -EFAULT.
 */
int klp_rs_prev_name(char *buf, size_t len)
{
	struct klp_state *state = klp_get_prev_state(KLP_RS_STATE_ID);
	const struct klp_rs_patch_header *h;
	const char *name;
	size_t i;

	if (!state || !state->data || !len)
		return -EFAULT;
	h = state->data;
	if (copy_from_kernel_nofault(&name, &h->name, sizeof(name)) || !name)
		return -EFAULT;
	/* Byte by byte: strncpy_from_kernel_nofault is not exported to modules. */
	for (i = 0; i + 1 < len; i++) {
		if (copy_from_kernel_nofault(&buf[i], name + i, 1))
			return -EFAULT;
		if (!buf[i])
			return 0;
	}
	buf[i] = '\0';
	return 0;
}

int klp_rs_replaces(void)
{
	return patch.replace;
}

/*
 * Pinning. The dispatcher makes a transition's plan for the module objects that are loaded
 * when it starts and runs the plan's second half after the kernel has discarded the nop
 * objects (klp_complete_transition: klp_discard_nops before the post callbacks), when the
 * kernel's object list can no longer say whether a module only the outgoing patch patches is
 * loaded. So each target module a plan covers is pinned from the moment the plan counts it
 * until the transition completes or is reversed: it cannot be unloaded meanwhile (short of
 * `rmmod -f`), and the pins are the record of what is loaded. A module whose init fails after
 * it came, or that is forced out, still goes: the kernel calls our post_unpatch for it
 * (klp_cleanup_module_patches_limited), and the dispatcher unpins it there, while the module
 * is still there to unpin. What keeps our record right is that callback, which comes for every
 * loaded object before the module is freed; the reference only makes a plain rmmod wait.
 */

/* Makes room for a pin per object (nops included) and has the nop objects call us. */
int klp_rs_pin_begin(void)
{
	struct klp_patch *p = &patch;
	struct klp_object *obj;
	size_t n = 0;

	klp_for_each_object(p, obj) {
		n++;
		/*
		 * The kernel gives the nop objects it adds for modules only the outgoing patch
		 * patches no callbacks, so a module that loads during the transition would never
		 * reach us: klp_module_coming calls the transition patch's pre_patch for it, and
		 * klp_module_going its post_unpatch, for nops as for any object. The nops belong
		 * to this patch and are freed with it or at klp_discard_nops.
		 */
		if (obj->dynamic) {
			obj->callbacks.pre_patch = klp_rs_pre_patch;
			obj->callbacks.post_unpatch = klp_rs_post_unpatch;
		}
	}
	if (n > pinned_room) {
		struct klp_rs_pin *more = krealloc(pinned, n * sizeof(*pinned), GFP_KERNEL);

		if (!more)
			return -ENOMEM;
		pinned = more;
		pinned_room = n;
	}
	return 0;
}

static struct klp_object *module_object(const char *name)
{
	struct klp_patch *p = &patch;
	struct klp_object *obj;

	klp_for_each_object(p, obj)
		if (obj->name && !strcmp(obj->name, name))
			return obj;
	return NULL;
}

static ssize_t pin_index(const char *name)
{
	size_t i;

	for (i = 0; i < npinned; i++)
		if (!strcmp(pinned[i].mod->name, name))
			return i;
	return -1;
}

/*
 * 1: the module is loaded and pinned (now or before); 0: it is not loaded. A module whose
 * unloading has begun (obj->mod is set until klp_module_going, which runs under klp_mutex
 * as we do) cannot be referenced any more, but it is still loaded: it is recorded without a
 * reference, and klp_module_going will call our post_unpatch for it before it is freed, as
 * for any pinned module that goes.
 */
int klp_rs_pin(const char *name)
{
	struct klp_object *obj = module_object(name);
	struct klp_rs_pin *pin;

	if (pin_index(name) >= 0)
		return 1;
	if (!obj || !obj->mod)
		return 0;
	/* One room per object, nops included (klp_rs_pin_begin): cannot be full. */
	if (WARN_ON_ONCE(npinned >= pinned_room))
		return 0;
	pin = &pinned[npinned++];
	pin->mod = obj->mod;
	pin->ref = try_module_get(obj->mod);
	return 1;
}

int klp_rs_pinned(const char *name)
{
	return pin_index(name) >= 0;
}

static void unpin_at(size_t i)
{
	if (pinned[i].ref)
		module_put(pinned[i].mod);
	pinned[i] = pinned[--npinned];
}

void klp_rs_unpin(const char *name)
{
	ssize_t i = pin_index(name);

	if (i >= 0)
		unpin_at(i);
}

void klp_rs_unpin_all(void)
{
	while (npinned)
		unpin_at(npinned - 1);
}
