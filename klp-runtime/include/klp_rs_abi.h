/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The klp-rs table format, for the generic C init (docs/table-format.md). Mirrors
 * klp-runtime/src/abi.rs; a test compiles this header and compares every offset.
 */
#ifndef KLP_RS_ABI_H
#define KLP_RS_ABI_H

#define KLP_RS_FORMAT_VERSION 2
#define KLP_RS_STATE_ID 0x6b6c707273000001UL
#define KLP_RS_STATE_VERSION 1
#define KLP_RS_STACK_STATE_ID 0x6b6c707273000002UL
/* Registered instead of KLP_RS_STATE_ID by a module that hands its sets to the kernel */
#define KLP_RS_NATIVE_STATE_ID 0x6b6c707273000003UL
/* A shadow id reaches klp_shadow_* as KLP_RS_SHADOW_NAMESPACE | id (format 2 on) */
#define KLP_RS_SHADOW_NAMESPACE 0x6b6c707273000000UL
#define KLP_RS_SHADOW_ID_MAX 0xffffffUL
/* klp_runtime::abi::Hook: the hook numbers the trampolines pass to the dispatcher */
#define KLP_RS_HOOK_PRE_PATCH 0
#define KLP_RS_HOOK_POST_PATCH 1
#define KLP_RS_HOOK_PRE_UNPATCH 2
#define KLP_RS_HOOK_POST_UNPATCH 3
/* klp_runtime::abi::Gfp */
#define KLP_RS_GFP_KERNEL 0
#define KLP_RS_GFP_ATOMIC 1

struct klp_rs_table {
	const void *start;
	const void *end;
};

struct klp_rs_patch_header {
	char magic[8];
	unsigned int format_version;
	unsigned int size;
	const char *name;
	struct klp_rs_table funcs;
	struct klp_rs_table sets;
	struct klp_rs_table shadows;
};

struct klp_rs_func {
	unsigned int size;
	unsigned int sympos;
	const char *object;
	const char *old_name;
	void *new_func;
	const char *origin;
};

struct klp_rs_set {
	unsigned int size;
	unsigned int id;
	const char *object;
	int (*pre_patch)(const char *object);
	void (*post_patch)(const char *object);
	void (*pre_unpatch)(const char *object);
	void (*post_unpatch)(const char *object);
	const char *origin;
};

struct klp_rs_shadow {
	unsigned int size;
	unsigned int owner;
	unsigned long id;
	const char *type_name;
	unsigned int type_size;
	unsigned int type_align;
	int (*ctor)(void *obj, void *shadow_data, void *ctor_data);
	void (*dtor)(void *obj, void *shadow_data);
	const char *origin;
};

#endif
