#include "config.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/x509.h>

#include "agent/audit.h"
#include "agent/dispatch.h"
#include "agent/metrics.h"
#include "agent/policy.h"
#include "renew/renew.h"
#include "agent/sign.h"
#include "common/log.h"
#include "common/proto.h"
#include "common/scheme.h"
#include "common/util.h"
#include "keystore/csr.h"
#include "mtls-agent/client.h"

#define MAX_SANS 64
#define MAX_SUBJECT 1024
/* How long RENEW waits for the transaction (polling included) before answering. */
#define RENEW_WAIT_S 300

/* What a handler reports back: an error code with a message, or success. */
struct result {
	int code;
	char msg[MTLSA_ERRMSG_MAX];
};

static int fail(struct result *res, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static int fail(struct result *res, int code, const char *fmt, ...)
{
	va_list ap;

	res->code = code;
	va_start(ap, fmt);
	vsnprintf(res->msg, sizeof(res->msg), fmt, ap);
	va_end(ap);
	return code;
}

int dispatch_error_reply(struct buf *reply, uint32_t id, int code, const char *msg)
{
	int r;

	if (code >= 0 || code < -1000)
		code = MTLS_AGENT_ERR_INTERNAL;
	if ((r = proto_frame_begin(reply, MSG_REPLY_ERROR, id)) != 0 ||
	    (r = buf_put_u32(reply, (uint32_t)-code)) != 0 ||
	    (r = buf_put_cstring(reply, msg != NULL ? msg : mtls_agent_strerror(code))) != 0 ||
	    (r = proto_frame_end(reply)) != 0)
		return r;
	return 0;
}

static int is_admin(const struct dispatch_env *env, const struct peer *peer)
{
	const struct config *cfg = env->rt->cfg;

	return acl_allows(cfg->admin_users, cfg->n_admin_users, cfg->admin_groups,
			  cfg->n_admin_groups, peer);
}

static int may_use(const struct identity_rt *id, const struct peer *peer)
{
	return acl_allows(id->cfg->allow_users, id->cfg->n_allow_users, id->cfg->allow_groups,
			  id->cfg->n_allow_groups, peer);
}

/*
 * Refusals are logged, but a caller must not be able to flood the log: per
 * uid, at most REFUSAL_LOG_BURST lines per REFUSAL_LOG_WINDOW seconds; the
 * rest are counted and the count is logged with the uid's first refusal in a
 * later window (or when its slot is taken by another uid). A fixed table:
 * callers beyond REFUSAL_SLOTS distinct uids take over the oldest slot.
 */
#define REFUSAL_LOG_BURST 10
#define REFUSAL_LOG_WINDOW 60
#define REFUSAL_SLOTS 64

static struct refusal_slot {
	int used;
	uid_t uid;
	time_t start;
	unsigned logged;
	unsigned long suppressed;
} refusal_slots[REFUSAL_SLOTS];
static pthread_mutex_t refusal_lock = PTHREAD_MUTEX_INITIALIZER;

static void log_refusal(const struct dispatch_env *env, const struct peer *peer, const char *what,
			const char *why)
{
	struct refusal_slot *slot = NULL, *oldest = NULL;
	unsigned long flushed = 0, suppressed_now = 0;
	uid_t flushed_uid = 0;
	time_t flushed_secs = 0;
	int emit = 0;
	size_t i;
	char safe[256], safe_why[800];

	pthread_mutex_lock(&refusal_lock);
	for (i = 0; i < REFUSAL_SLOTS && slot == NULL; i++) {
		if (refusal_slots[i].used && refusal_slots[i].uid == peer->uid)
			slot = &refusal_slots[i];
		else if (!refusal_slots[i].used && oldest == NULL)
			oldest = &refusal_slots[i];
	}
	if (slot == NULL && oldest == NULL)
		for (i = 0, oldest = &refusal_slots[0]; i < REFUSAL_SLOTS; i++)
			if (refusal_slots[i].start < oldest->start)
				oldest = &refusal_slots[i];
	if (slot == NULL) {
		slot = oldest;
		if (slot->used && slot->suppressed > 0) {
			flushed = slot->suppressed;
			flushed_uid = slot->uid;
			flushed_secs = env->now - slot->start;
		}
		memset(slot, 0, sizeof(*slot));
		slot->used = 1;
		slot->uid = peer->uid;
		slot->start = env->now;
	} else if (env->now - slot->start >= REFUSAL_LOG_WINDOW || env->now < slot->start) {
		if (slot->suppressed > 0) {
			flushed = slot->suppressed;
			flushed_uid = slot->uid;
			flushed_secs = env->now - slot->start;
		}
		slot->start = env->now;
		slot->logged = 0;
		slot->suppressed = 0;
	}
	if (slot->logged < REFUSAL_LOG_BURST) {
		slot->logged++;
		emit = 1;
	} else {
		suppressed_now = ++slot->suppressed;
	}
	pthread_mutex_unlock(&refusal_lock);

	if (flushed > 0)
		log_info("refused uid %ld: %lu more refusals in the %ld s before were not logged",
			 (long)flushed_uid, flushed, (long)flushed_secs);
	if (emit)
		log_info("refused uid %ld gid %ld pid %ld: %s: %s", (long)peer->uid,
			 (long)peer->gid, (long)peer->pid, log_sanitize(what, safe, sizeof(safe)),
			 /* It can quote the caller: its program's path is the caller's choice. */
			 log_sanitize(why, safe_why, sizeof(safe_why)));
	else if (suppressed_now == 1)
		log_info(
			"refused uid %ld: more than %d refusals in %d s: further ones are counted, "
			"not logged",
			(long)peer->uid, REFUSAL_LOG_BURST, REFUSAL_LOG_WINDOW);
}

/* Reads the identity name and resolves it; also the access check for reads. */
static int get_identity(const struct dispatch_env *env, const struct peer *peer, struct reader *rd,
			int admin_ok, struct identity_rt **out, struct result *res)
{
	struct identity_rt *id;
	char *name = NULL, safe[PROTO_MAX_NAME + 1], why[400];
	int r;

	*out = NULL;
	if ((r = rd_cstring(rd, PROTO_MAX_NAME, &name)) != 0)
		return fail(res, r, "bad identity name");
	id = runtime_identity(env->rt, name);
	if (id == NULL && is_admin(env, peer)) {
		/* Administrators may know which identities exist: tell them precisely. */
		fail(res, MTLS_AGENT_ERR_NOT_FOUND, "no identity \"%s\"",
		     log_sanitize(name, safe, sizeof(safe)));
		free(name);
		return res->code;
	}
	if (id == NULL || (!may_use(id, peer) && !(admin_ok && is_admin(env, peer)))) {
		/*
		 * Any other caller gets one answer for a name that does not
		 * exist and one it may not use, so it cannot learn which
		 * identities exist.
		 */
		log_sanitize(name, safe, sizeof(safe));
		fail(res, MTLS_AGENT_ERR_DENIED,
		     "identity \"%s\" does not exist or is not allowed for uid %ld", safe,
		     (long)peer->uid);
		log_refusal(env, peer, safe,
			    id == NULL ? "no such identity" : "not in allow-users/allow-groups");
		audit_event(peer, "access", safe, NULL, "refused",
			    id == NULL ? "no such identity" : "not in allow-users/allow-groups");
		if (id != NULL)
			atomic_fetch_add(&id->n_refused, 1);
		free(name);
		return res->code;
	}
	free(name);
	/*
	 * allow-exe / allow-unit narrow who may use the identity beyond its uid;
	 * administrators reading or administering it are not held to them. The
	 * caller passed the uid check, so it may learn which rule failed.
	 */
	if (!(admin_ok && is_admin(env, peer)) &&
	    !acl_caller_allowed(id->cfg->allow_exe, id->cfg->n_allow_exe, id->cfg->allow_unit,
				id->cfg->n_allow_unit, peer, why, sizeof(why))) {
		fail(res, MTLS_AGENT_ERR_DENIED, "identity \"%s\": %s", id->cfg->name, why);
		log_refusal(env, peer, id->cfg->name, why);
		audit_event(peer, "access", id->cfg->name, NULL, "refused", why);
		atomic_fetch_add(&id->n_refused, 1);
		return res->code;
	}
	*out = id;
	return 0;
}

static int require_admin(const struct dispatch_env *env, const struct peer *peer, const char *op,
			 struct result *res)
{
	if (is_admin(env, peer))
		return 0;
	log_refusal(env, peer, op, "not an administrator");
	return fail(res, MTLS_AGENT_ERR_DENIED,
		    "%s is an administrator operation; uid %ld is not "
		    "in admin-users/admin-groups",
		    op, (long)peer->uid);
}

static int put_schemes(struct buf *b, const struct ks_key *key)
{
	const struct scheme *s;
	uint32_t n = 0;
	size_t i;
	int r;

	for (i = 0; key != NULL && (s = scheme_at(i)) != NULL; i++)
		n += ks_key_fits_scheme(key, s) ? 1 : 0;
	if ((r = buf_put_u32(b, n)) != 0)
		return r;
	for (i = 0; key != NULL && (s = scheme_at(i)) != NULL; i++)
		if (ks_key_fits_scheme(key, s) && (r = buf_put_u16(b, s->code)) != 0)
			return r;
	return 0;
}

static int put_chain(struct buf *b, STACK_OF(X509) * chain)
{
	unsigned char *der;
	int i, n = chain != NULL ? sk_X509_num(chain) : 0, len, r;

	if ((r = buf_put_u32(b, (uint32_t)n)) != 0)
		return r;
	for (i = 0; i < n; i++) {
		der = NULL;
		if ((len = i2d_X509(sk_X509_value(chain, i), &der)) <= 0)
			return MTLS_AGENT_ERR_INTERNAL;
		r = buf_put_string(b, der, (size_t)len);
		OPENSSL_free(der);
		if (r != 0)
			return r;
	}
	return 0;
}

/* The identity record of PROTOCOL.md; takes the identity's lock. */
static int put_identity(struct buf *b, struct identity_rt *id)
{
	struct ks_key *key;
	char err[MTLSA_ERRMSG_MAX];
	int r;

	pthread_mutex_lock(&id->lock);
	identity_refresh(id, 0, err, sizeof(err));
	key = id->current;
	if ((r = buf_put_cstring(b, id->cfg->name)) != 0 ||
	    (r = buf_put_u8(b, key != NULL ? (uint8_t)key->type : MTLS_AGENT_KEY_NONE)) != 0 ||
	    (r = buf_put_u16(b, key != NULL ? (uint16_t)key->bits : 0)) != 0 ||
	    (r = buf_put_string(b, key != NULL ? key->spki : NULL,
				key != NULL ? key->spki_len : 0)) != 0 ||
	    (r = put_schemes(b, key)) != 0 ||
	    (r = buf_put_u64(b, id->chain != NULL ? (uint64_t)id->not_after : 0)) != 0 ||
	    (r = put_chain(b, id->chain)) != 0)
		goto out;
out:
	pthread_mutex_unlock(&id->lock);
	return r;
}

static int op_hello(struct conn_ctx *conn, struct reader *rd, struct buf *out, struct result *res)
{
	uint32_t min, max;
	char *client = NULL;
	int r;

	if ((r = rd_u32(rd, &min)) != 0 || (r = rd_u32(rd, &max)) != 0 ||
	    (r = rd_cstring(rd, PROTO_MAX_NAME, &client)) != 0 || (r = rd_done(rd)) != 0) {
		free(client);
		return fail(res, r, "malformed HELLO");
	}
	free(client);
	if (min > PROTO_VERSION || max < PROTO_VERSION)
		return fail(res, MTLS_AGENT_ERR_UNSUPPORTED,
			    "no common protocol version (client %u..%u, agent %u)", min, max,
			    PROTO_VERSION);
	conn->hello_done = 1;
	conn->version = PROTO_VERSION;
	if ((r = buf_put_u32(out, PROTO_VERSION)) != 0 ||
	    (r = buf_put_cstring(out, PACKAGE_VERSION)) != 0)
		return fail(res, r, "reply too large");
	return 0;
}

static int op_list(const struct dispatch_env *env, const struct peer *peer, struct reader *rd,
		   struct buf *out, struct result *res)
{
	int admin = is_admin(env, peer), r;
	uint8_t flags = 0;
	uint32_t n = 0;
	size_t i;

	/* An optional flags byte (older clients send none). */
	if (rd_left(rd) > 0 && (r = rd_u8(rd, &flags)) != 0)
		return fail(res, r, "malformed LIST request");
	if ((r = rd_done(rd)) != 0)
		return fail(res, r, "LIST takes at most one flags byte");
	if ((flags & ~PROTO_LIST_USABLE) != 0)
		return fail(res, MTLS_AGENT_ERR_BAD_MESSAGE, "unknown LIST flags 0x%02x", flags);
	/* The PKCS#11 module shows only keys the caller can sign with. */
	if (flags & PROTO_LIST_USABLE)
		admin = 0;
	for (i = 0; i < env->rt->n_ids; i++)
		n += (admin || may_use(&env->rt->ids[i], peer)) ? 1 : 0;
	if ((r = buf_put_u32(out, n)) != 0)
		return fail(res, r, "reply too large");
	for (i = 0; i < env->rt->n_ids; i++)
		if ((admin || may_use(&env->rt->ids[i], peer)) &&
		    (r = put_identity(out, &env->rt->ids[i])) != 0)
			return fail(res, r, "reply too large");
	return 0;
}

static int op_get_identity(const struct dispatch_env *env, const struct peer *peer,
			   struct reader *rd, struct buf *out, struct result *res, int chain_only)
{
	struct identity_rt *id;
	int r;

	if ((r = get_identity(env, peer, rd, 1, &id, res)) != 0)
		return r;
	if ((r = rd_done(rd)) != 0)
		return fail(res, r, "trailing bytes after the identity name");
	if (chain_only) {
		char err[MTLSA_ERRMSG_MAX];

		pthread_mutex_lock(&id->lock);
		/* The certificate file as it is now (replaced by another tool?). */
		identity_refresh(id, 0, err, sizeof(err));
		r = put_chain(out, id->chain);
		pthread_mutex_unlock(&id->lock);
	} else {
		r = put_identity(out, id);
	}
	return r != 0 ? fail(res, r, "reply too large") : 0;
}

static int op_sign(const struct dispatch_env *env, const struct peer *peer, struct reader *rd,
		   struct buf *out, struct result *res)
{
	const uint8_t *want_hash, *data;
	uint8_t *sig = NULL;
	size_t want_len, data_len, sig_len = 0;
	const struct scheme *scheme;
	struct identity_rt *id;
	struct ks_key *key;
	enum sign_result outcome;
	const char *reason;
	char err[MTLSA_ERRMSG_MAX];
	uint16_t code;
	uint8_t flags;
	int r;

	if ((r = get_identity(env, peer, rd, 0, &id, res)) != 0)
		return r;
	if ((r = rd_u16(rd, &code)) != 0 || (r = rd_u8(rd, &flags)) != 0 ||
	    (r = rd_string(rd, &want_hash, &want_len)) != 0 ||
	    (r = rd_string(rd, &data, &data_len)) != 0 || (r = rd_done(rd)) != 0)
		return fail(res, r, "malformed SIGN request");
	if ((flags & ~MTLS_AGENT_SIGN_DIGEST) != 0)
		return fail(res, MTLS_AGENT_ERR_BAD_MESSAGE, "unknown SIGN flags 0x%02x", flags);
	if (want_len != 0 && want_len != MTLS_AGENT_SPKI_HASH_LEN)
		return fail(res, MTLS_AGENT_ERR_BAD_MESSAGE, "key selector must be 0 or 32 bytes");
	if ((scheme = scheme_by_code(code)) == NULL)
		return fail(res, MTLS_AGENT_ERR_SCHEME, "unknown signature scheme 0x%04x", code);

	pthread_mutex_lock(&id->lock);
	r = identity_refresh(id, 0, err, sizeof(err));
	key = want_len != 0 ? identity_key_by_hash(id, want_hash) : id->current;
	if (key == NULL) {
		if (r != 0)
			fail(res, r, "identity \"%s\": %s", id->cfg->name, err);
		else if (want_len != 0)
			fail(res, MTLS_AGENT_ERR_KEY_GONE,
			     "identity \"%s\" no longer holds the requested key", id->cfg->name);
		else
			fail(res, MTLS_AGENT_ERR_KEY_UNAVAILABLE, "identity \"%s\": %s",
			     id->cfg->name, id->problem[0] != '\0' ? id->problem : "no key");
	}
	pthread_mutex_unlock(&id->lock);
	if (key == NULL)
		return res->code;

	r = identity_sign(id, key, scheme, flags, data, data_len, SIGN_CLIENT, &sig, &sig_len,
			  &outcome, &reason, err, sizeof(err));
	switch (outcome) {
	case SIGN_REFUSED:
		log_refusal(env, peer, id->cfg->name, reason);
		audit_event(peer, "sign", id->cfg->name, scheme->name, "refused", reason);
		return fail(res, r, "%s", err);
	case SIGN_KEYSTORE_FAILED:
		audit_event(peer, "sign", id->cfg->name, scheme->name, "error", err);
		return fail(res, r, "identity \"%s\": %s", id->cfg->name, err);
	case SIGN_BAD_REQUEST:
		return fail(res, r, "%s", err);
	case SIGN_DONE:
		break;
	}
	audit_event(peer, "sign", id->cfg->name, scheme->name, "ok", NULL);
	r = buf_put_string(out, sig, sig_len);
	free(sig);
	return r != 0 ? fail(res, r, "reply too large") : 0;
}

static int put_field(struct buf *b, const char *key, const char *value)
{
	int r;

	if ((r = buf_put_cstring(b, key)) != 0)
		return r;
	return buf_put_cstring(b, value);
}

/* One STATUS identity record: a name and key/value fields (docs/PROTOCOL.md). */
static int put_identity_status(struct buf *b, struct identity_rt *id)
{
	char state[600], keydesc[64], nb[32], na[32], ns[32], nr[32], err[256];
	char next[32], last[32], fails[32], renewed[32];
	const char *fields[2 * 17];
	struct renew_status rs;
	size_t gens, n = 0, i;
	int r;

	pthread_mutex_lock(&id->lock);
	identity_refresh(id, 0, err, sizeof(err));
	ks_state(id->ks, state, sizeof(state));
	if (strcmp(state, "ok") == 0 && id->problem[0] != '\0')
		snprintf(state, sizeof(state), "%s", id->problem);
	else if (strcmp(state, "ok") == 0 && id->chain == NULL)
		snprintf(state, sizeof(state), "no certificate installed");
	if (id->current == NULL)
		snprintf(keydesc, sizeof(keydesc), "none");
	else
		snprintf(keydesc, sizeof(keydesc), "%s %u",
			 id->current->type == MTLS_AGENT_KEY_EC	   ? "EC"
			 : id->current->type == MTLS_AGENT_KEY_RSA ? "RSA"
								   : "Ed25519",
			 id->current->bits);
	gens = id->n_keys;
	format_utc(id->chain != NULL ? id->not_after : 0, na, sizeof(na));
	pthread_mutex_unlock(&id->lock);
	snprintf(nb, sizeof(nb), "%zu", gens);
	snprintf(ns, sizeof(ns), "%llu", (unsigned long long)atomic_load(&id->n_signed));
	snprintf(nr, sizeof(nr), "%llu", (unsigned long long)atomic_load(&id->n_refused));
#define FIELD(k, v) (fields[n++] = (k), fields[n++] = (v))
	FIELD("keystore", ks_name(id->ks));
	FIELD("state", state);
	FIELD("key", keydesc);
	FIELD("generations", nb);
	FIELD("not-after", na);
	FIELD("sign-policy", sign_policy_name(id->cfg->sign_policy));
	FIELD("signatures", ns);
	FIELD("refused", nr);
	if (id->cfg->renew != RENEW_NONE) {
		FIELD("renew", renew_method_name(id->cfg->renew));
		if (renew_get_status(id->cfg->name, &rs) != 0) {
			FIELD("next-renewal", "-");
			FIELD("renewal-problem", "the renewal service is not running");
		} else {
			format_utc(rs.next, next, sizeof(next));
			format_utc(rs.last_attempt, last, sizeof(last));
			format_utc(rs.last_renewed, renewed, sizeof(renewed));
			snprintf(fails, sizeof(fails), "%u", rs.failures);
			FIELD("next-renewal", next);
			FIELD("last-attempt", last);
			FIELD("last-result", rs.last_attempt == 0 ? "-" : rs.last_result);
			FIELD("failures", fails);
			FIELD("last-renewed", renewed);
			if (rs.action[0] != '\0')
				FIELD("action", rs.action);
			if (rs.waiting[0] != '\0')
				FIELD("waiting", rs.waiting);
			if (rs.revocation[0] != '\0')
				FIELD("revocation", rs.revocation);
		}
	} else if (renew_get_status(id->cfg->name, &rs) == 0 && rs.revocation[0] != '\0') {
		/* Checked without renewal: the outcome alone, no renewal fields. */
		FIELD("revocation", rs.revocation);
	}
#undef FIELD
	if ((r = buf_put_cstring(b, "identity")) != 0 ||
	    (r = buf_put_cstring(b, id->cfg->name)) != 0 ||
	    (r = buf_put_u32(b, (uint32_t)(n / 2))) != 0)
		return r;
	for (i = 0; i < n; i += 2)
		if ((r = put_field(b, fields[i], fields[i + 1])) != 0)
			return r;
	return 0;
}

static int op_status(const struct dispatch_env *env, const struct peer *peer, struct reader *rd,
		     struct buf *out, struct result *res)
{
	const struct runtime *rt = env->rt;
	int admin = is_admin(env, peer), r;
	char state[512];
	uint32_t n = 0;
	size_t i;

	if ((r = rd_done(rd)) != 0)
		return fail(res, r, "STATUS takes no arguments");
	n += admin ? (uint32_t)rt->cfg->n_keystores : 0;
	for (i = 0; i < rt->n_ids; i++)
		n += (admin || may_use(&rt->ids[i], peer)) ? 1 : 0;
	if ((r = buf_put_cstring(out, PACKAGE_VERSION)) != 0 ||
	    (r = buf_put_u64(out, (uint64_t)(env->now - rt->started))) != 0 ||
	    (r = buf_put_u8(out, admin ? 1 : 0)) != 0 || (r = buf_put_u32(out, n)) != 0)
		return fail(res, r, "reply too large");
	for (i = 0; admin && i < rt->cfg->n_keystores; i++) {
		ks_state(rt->keystores[i], state, sizeof(state));
		if ((r = buf_put_cstring(out, "keystore")) != 0 ||
		    (r = buf_put_cstring(out, rt->cfg->keystores[i].name)) != 0 ||
		    (r = buf_put_u32(out, 2)) != 0 ||
		    (r = put_field(out, "type", rt->cfg->keystores[i].type)) != 0 ||
		    (r = put_field(out, "state", state)) != 0)
			return fail(res, r, "reply too large");
	}
	for (i = 0; i < rt->n_ids; i++)
		if ((admin || may_use(&rt->ids[i], peer)) &&
		    (r = put_identity_status(out, &rt->ids[i])) != 0)
			return fail(res, r, "reply too large");
	return 0;
}

static int op_keygen(const struct dispatch_env *env, const struct peer *peer, struct reader *rd,
		     struct buf *out, struct result *res)
{
	struct identity_rt *id;
	struct ks_key *key;
	char *type = NULL, err[256];
	int gen, r;

	if ((r = require_admin(env, peer, "keygen", res)) != 0 ||
	    (r = get_identity(env, peer, rd, 1, &id, res)) != 0)
		return r;
	if ((r = rd_cstring(rd, 32, &type)) != 0 || (r = rd_done(rd)) != 0) {
		free(type);
		return fail(res, r, "malformed KEYGEN request");
	}
	gen = ks_keygen_type_from_name(type);
	free(type);
	if (gen == 0)
		return fail(res, MTLS_AGENT_ERR_INVALID_ARG,
			    "unknown key type (use ec-p256, "
			    "ec-p384, rsa-2048, rsa-3072, rsa-4096 or ed25519)");
	if ((r = identity_keygen(id, gen, &key, err, sizeof(err))) != 0)
		return fail(res, r, "keygen for \"%s\": %s", id->cfg->name, err);
	log_info("identity \"%s\": new key generated by uid %ld", id->cfg->name, (long)peer->uid);
	if ((r = buf_put_string(out, key->spki, key->spki_len)) != 0)
		return fail(res, r, "reply too large");
	return 0;
}

static int op_csr(const struct dispatch_env *env, const struct peer *peer, struct reader *rd,
		  struct buf *out, struct result *res)
{
	char *subject = NULL, *sans[MAX_SANS], err[256];
	uint8_t *der = NULL;
	size_t der_len = 0, i, n_read = 0;
	struct identity_rt *id;
	struct ks_key *key;
	uint32_t n_sans;
	int r;

	if ((r = require_admin(env, peer, "csr", res)) != 0 ||
	    (r = get_identity(env, peer, rd, 1, &id, res)) != 0)
		return r;
	if ((r = rd_cstring(rd, MAX_SUBJECT, &subject)) != 0 || (r = rd_u32(rd, &n_sans)) != 0) {
		fail(res, r, "malformed CSR request");
		goto out;
	}
	if (n_sans > MAX_SANS) {
		fail(res, MTLS_AGENT_ERR_TOO_LARGE, "at most %d subjectAltNames", MAX_SANS);
		goto out;
	}
	for (n_read = 0; n_read < n_sans; n_read++) {
		if ((r = rd_cstring(rd, 512, &sans[n_read])) != 0) {
			fail(res, r, "malformed subjectAltName");
			goto out;
		}
	}
	if ((r = rd_done(rd)) != 0) {
		fail(res, r, "trailing bytes in CSR request");
		goto out;
	}
	pthread_mutex_lock(&id->lock);
	r = identity_refresh(id, 0, err, sizeof(err));
	key = identity_newest_key(id);
	pthread_mutex_unlock(&id->lock);
	if (key == NULL) {
		if (r != 0)
			fail(res, r, "identity \"%s\": %s", id->cfg->name, err);
		else
			fail(res, MTLS_AGENT_ERR_KEY_UNAVAILABLE,
			     "identity \"%s\" has no key; run keygen first", id->cfg->name);
		goto out;
	}
	if ((r = csr_build(id->ks, key, subject, (const char *const *)sans, n_sans, &der, &der_len,
			   err, sizeof(err))) != 0) {
		fail(res, r, "csr for \"%s\": %s", id->cfg->name, err);
		goto out;
	}
	if ((r = buf_put_string(out, der, der_len)) != 0)
		fail(res, r, "reply too large");
	else
		res->code = 0;
out:
	for (i = 0; i < n_read; i++)
		free(sans[i]);
	free(subject);
	free(der);
	return res->code;
}

static int op_import_cert(const struct dispatch_env *env, const struct peer *peer,
			  struct reader *rd, struct buf *out, struct result *res)
{
	struct identity_rt *id;
	const uint8_t *data;
	time_t not_after;
	char err[MTLSA_ERRMSG_MAX];
	size_t len;
	int r;

	if ((r = require_admin(env, peer, "import-cert", res)) != 0 ||
	    (r = get_identity(env, peer, rd, 1, &id, res)) != 0)
		return r;
	if ((r = rd_string(rd, &data, &len)) != 0 || (r = rd_done(rd)) != 0)
		return fail(res, r, "malformed IMPORT_CERT request");
	if ((r = identity_import_cert(id, data, len, env->now, &not_after, err, sizeof(err))) !=
	    0) {
		log_warn("identity \"%s\": certificate refused: %s", id->cfg->name, err);
		return fail(res, r, "%s", err);
	}
	log_info("identity \"%s\": certificate imported by uid %ld", id->cfg->name,
		 (long)peer->uid);
	/* The renewal schedule follows the certificate. */
	renew_kick();
	if ((r = buf_put_u64(out, (uint64_t)not_after)) != 0)
		return fail(res, r, "reply too large");
	return 0;
}

static int op_renew(const struct dispatch_env *env, const struct peer *peer, struct reader *rd,
		    struct buf *out, struct result *res)
{
	struct identity_rt *id;
	time_t not_after;
	char msg[MTLSA_ERRMSG_MAX];
	int r;

	if ((r = require_admin(env, peer, "renew", res)) != 0 ||
	    (r = get_identity(env, peer, rd, 1, &id, res)) != 0)
		return r;
	if ((r = rd_done(rd)) != 0)
		return fail(res, r, "malformed RENEW request");
	if (id->cfg->renew == RENEW_NONE)
		return fail(res, MTLS_AGENT_ERR_CONFIG,
			    "identity \"%s\" has renew = none: set renew = cmp or est",
			    id->cfg->name);
	log_info("identity \"%s\": renewal requested by uid %ld", id->cfg->name, (long)peer->uid);
	if ((r = renew_now(id->cfg->name, RENEW_WAIT_S, msg, sizeof(msg))) != 0)
		return fail(res, r, "identity \"%s\": %s", id->cfg->name, msg);
	pthread_mutex_lock(&id->lock);
	not_after = id->chain != NULL ? id->not_after : 0;
	pthread_mutex_unlock(&id->lock);
	if ((r = buf_put_u64(out, (uint64_t)not_after)) != 0 ||
	    (r = buf_put_cstring(out, msg)) != 0)
		return fail(res, r, "reply too large");
	return 0;
}

static int op_reload(const struct dispatch_env *env, const struct peer *peer, struct reader *rd,
		     struct result *res)
{
	char err[MTLSA_ERRMSG_MAX];
	int r;

	if ((r = require_admin(env, peer, "reload", res)) != 0)
		return r;
	if ((r = rd_done(rd)) != 0)
		return fail(res, r, "RELOAD takes no arguments");
	if (env->reload == NULL)
		return fail(res, MTLS_AGENT_ERR_UNSUPPORTED, "reload not available");
	if ((r = env->reload(env->reload_arg, err, sizeof(err))) != 0)
		return fail(res, MTLS_AGENT_ERR_CONFIG, "%s", err);
	return 0;
}

static int metrics_may_see(const struct identity_rt *id, void *arg)
{
	const struct peer *peer = arg;

	return peer == NULL || may_use(id, peer);
}

/* METRICS: the Prometheus text; administrators see everything, others their identities. */
static int op_metrics(const struct dispatch_env *env, const struct peer *peer, struct reader *rd,
		      struct buf *out, struct result *res)
{
	struct buf text;
	int admin = is_admin(env, peer), r;

	if ((r = rd_done(rd)) != 0)
		return fail(res, r, "METRICS takes no arguments");
	buf_init(&text, PROTO_MAX_REPLY / 2);
	r = metrics_render(&text, env->rt, metrics_may_see, admin ? NULL : (void *)peer, admin,
			   env->now);
	if (r == 0)
		r = buf_put_string(out, text.data, text.len);
	buf_free(&text);
	return r != 0 ? fail(res, r, "metrics too large") : 0;
}

/* One audit entry for an administrative request, whatever its outcome. */
static void audit_admin(const struct peer *peer, uint8_t type, const struct reader *req,
			const struct result *res)
{
	static const char *const ops[] = {"keygen", "csr", "import-cert", "reload", "renew"};
	struct reader rd = *req;
	char *name = NULL;

	/* Every administrative request but RELOAD starts with the identity name. */
	rd.off = 0;
	if (type != MSG_RELOAD && rd_cstring(&rd, PROTO_MAX_NAME, &name) != 0)
		name = NULL;
	audit_event(peer, ops[type - MSG_KEYGEN], name, NULL,
		    res->code == 0			 ? "ok"
		    : res->code == MTLS_AGENT_ERR_DENIED ? "refused"
							 : "error",
		    res->code == 0 ? NULL : res->msg);
	free(name);
}

int dispatch(const struct dispatch_env *env, struct conn_ctx *conn, const uint8_t *frame,
	     size_t len, struct buf *reply)
{
	struct result res = {0, ""};
	struct reader rd;
	struct buf payload;
	uint8_t type = 0;
	uint32_t id = 0;
	int r, close_after = 0;

	buf_init(&payload, PROTO_MAX_REPLY - PROTO_LEN_SIZE - PROTO_HDR_SIZE);
	if ((r = proto_frame_parse(frame, len, &type, &id, &rd)) != 0) {
		fail(&res, r, "malformed frame");
		close_after = 1;
		goto reply;
	}
	if (!conn->hello_done && type != MSG_HELLO) {
		fail(&res, MTLS_AGENT_ERR_UNSUPPORTED, "HELLO required first");
		goto reply;
	}
	switch (type) {
	case MSG_HELLO:
		op_hello(conn, &rd, &payload, &res);
		break;
	case MSG_LIST:
		op_list(env, &conn->peer, &rd, &payload, &res);
		break;
	case MSG_GET_CHAIN:
		op_get_identity(env, &conn->peer, &rd, &payload, &res, 1);
		break;
	case MSG_GET_IDENTITY:
		op_get_identity(env, &conn->peer, &rd, &payload, &res, 0);
		break;
	case MSG_SIGN:
		op_sign(env, &conn->peer, &rd, &payload, &res);
		break;
	case MSG_STATUS:
		op_status(env, &conn->peer, &rd, &payload, &res);
		break;
	case MSG_KEYGEN:
		op_keygen(env, &conn->peer, &rd, &payload, &res);
		break;
	case MSG_CSR:
		op_csr(env, &conn->peer, &rd, &payload, &res);
		break;
	case MSG_IMPORT_CERT:
		op_import_cert(env, &conn->peer, &rd, &payload, &res);
		break;
	case MSG_RELOAD:
		op_reload(env, &conn->peer, &rd, &res);
		break;
	case MSG_RENEW:
		op_renew(env, &conn->peer, &rd, &payload, &res);
		break;
	case MSG_METRICS:
		op_metrics(env, &conn->peer, &rd, &payload, &res);
		break;
	default:
		fail(&res, MTLS_AGENT_ERR_UNSUPPORTED, "unknown request type %u", type);
		break;
	}
	if (type >= MSG_KEYGEN && type <= MSG_RENEW)
		audit_admin(&conn->peer, type, &rd, &res);
reply:
	if (res.code == 0) {
		if ((r = proto_frame_begin(reply, MSG_REPLY_OK, id)) != 0 ||
		    (r = buf_put(reply, payload.data, payload.len)) != 0 ||
		    (r = proto_frame_end(reply)) != 0)
			fail(&res, r, "reply too large");
	}
	if (res.code != 0 && dispatch_error_reply(reply, id, res.code, res.msg) != 0)
		close_after = 1;
	buf_free(&payload);
	return close_after ? MTLS_AGENT_ERR_BAD_MESSAGE : 0;
}
