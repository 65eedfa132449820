/* mtls-agentctl check: keystores and identities, as the agent reports them. */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/asn1.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "client/ctl-check.h"
#include "common/certcheck.h"

/* A certificate this close to its end is reported by `check` as a warning. */
#define EXPIRY_WARN_DAYS 7

/* --- keystore and identity states from STATUS --- */

static const char *status_field(const struct mtls_agent_status_record *rec, const char *key)
{
	size_t i;

	for (i = 0; rec != NULL && i < rec->n_fields; i++)
		if (strcmp(rec->fields[i].key, key) == 0)
			return rec->fields[i].value;
	return NULL;
}

static const struct mtls_agent_status_record *status_record(const struct mtls_agent_status *st,
							    const char *kind, const char *name)
{
	size_t i;

	for (i = 0; st != NULL && name != NULL && i < st->n_records; i++)
		if (strcmp(st->records[i].kind, kind) == 0 &&
		    strcmp(st->records[i].name, name) == 0)
			return &st->records[i];
	return NULL;
}

/* An identity state that is about the identity itself, not about its keystore. */
static int identity_own_state(const char *s)
{
	return strcmp(s, "ok") == 0 || strcmp(s, "no certificate installed") == 0 ||
	       strstr(s, "matches none of the identity") != NULL || strncmp(s, "no key ", 7) == 0 ||
	       strncmp(s, "cannot read ", 12) == 0 || s[0] == '/';
}

/*
 * A keystore that is not "ok": PIN problems, TPM lockout, or unreachable (token absent,
 * wrong label, device or resource manager gone). prefix names the keystore when the
 * finding belongs to an identity.
 */
static void add_keystore_state(struct findings *fd, const char *prefix, const char *state,
			       const char *type, const char *ks, int admin)
{
	const char *who = admin ? "" : "for an administrator: ";

	if (strcasestr(state, "lockout") != NULL || strcasestr(state, "dictionary attack") != NULL)
		add_finding(
			fd, 0,
			"%sTPM lockout (%s) — %sfind what used a wrong authorization, then wait "
			"for the lockout to expire or clear it with 'tpm2_dictionarylockout "
			"--clear-lockout' (needs the lockout authorization), then '" PROG
			" reload'",
			prefix, state, who);
	else if (strstr(state, "PIN locked") != NULL || strstr(state, "one try left") != NULL)
		add_finding(
			fd, 0,
			"%sPIN locked (%s) — %sreset the user PIN with the SO PIN ('pkcs11-tool "
			"--login --login-type so --init-pin'), write it to the pin-file, then '" PROG
			" reload'",
			prefix, state, who);
	else if (strstr(state, "wrong PIN") != NULL)
		add_finding(fd, 0,
			    "%swrong PIN (%s) — %swrite the token's user PIN to the pin-file (the "
			    "agent tries again once the file changes), then '" PROG " reload'",
			    prefix, state, who);
	else if (strstr(state, "PIN") != NULL || strstr(state, "C_Login") != NULL ||
		 strstr(state, "accessible by group or others") != NULL ||
		 strstr(state, "must be owned by") != NULL ||
		 strstr(state, "usable secret") != NULL)
		add_finding(
			fd, 0,
			"%sPIN problem (%s) — %sfix the pin-file (owned by root, mode 0600, holding "
			"the user PIN), then '" PROG " reload'",
			prefix, state, who);
	else if ((type != NULL && strcmp(type, "tpm2") == 0) || strstr(state, "TPM") != NULL)
		add_finding(fd, 0,
			    "%sunreachable (%s) — %scheck that the TPM device in tcti = (default "
			    "/dev/tpmrm0) exists and the agent may open it, then '" PROG " reload'",
			    prefix, state, who);
	else
		add_finding(fd, 0,
			    "%sunreachable (%s) — %splug in the token, or fix token = in [keystore "
			    "\"%s\"] ('pkcs11-tool --module MODULE --list-token-slots' lists the "
			    "tokens), then '" PROG " reload'",
			    prefix, state, who, ks);
}

void check_keystore_records(struct doctor *d)
{
	const struct mtls_agent_status_record *idrec;
	const char *only_ks = NULL, *state;
	size_t i;

	if (d->only != NULL) {
		if ((idrec = status_record(d->st, "identity", d->only)) == NULL ||
		    (only_ks = status_field(idrec, "keystore")) == NULL)
			return;
	}
	for (i = 0; i < d->st->n_records; i++) {
		const struct mtls_agent_status_record *rec = &d->st->records[i];
		struct findings *fd;

		if (strcmp(rec->kind, "keystore") != 0 ||
		    (only_ks != NULL && strcmp(only_ks, rec->name) != 0))
			continue;
		fd = subject(d, "keystore", rec->name);
		state = status_field(rec, "state");
		if (state != NULL && strcmp(state, "ok") != 0)
			add_keystore_state(fd, "", state, status_field(rec, "type"), rec->name, 1);
	}
}

/* --- identities --- */

/* Validity of a certificate at now, by the agent's rule (certcheck); pos 0 is the leaf
 * (chooses the advice). */
static void check_validity(struct findings *fd, X509 *x, size_t pos, time_t now)
{
	const ASN1_TIME *nb = X509_get0_notBefore(x), *na = X509_get0_notAfter(x);
	unsigned flaws = certcheck_flaws(x, now);
	char when[40];
	int days, secs;

	if ((flaws & CERTCHECK_NOT_YET_VALID) != 0) {
		fmt_asn1_time(nb, when, sizeof(when));
		if (pos == 0)
			add_finding(fd, 0,
				    "certificate not valid before %s — check the system "
				    "clock (date -u), or wait",
				    when);
		else
			add_finding(fd, 0,
				    "chain certificate #%zu not valid before %s — check the "
				    "system clock (date -u)",
				    pos, when);
	}
	fmt_asn1_time(na, when, sizeof(when));
	if ((flaws & CERTCHECK_EXPIRED) != 0) {
		if (pos == 0)
			add_finding(fd, 0,
				    "certificate expired on %s — get a new one: '" PROG
				    " csr NAME --subject DN', then '" PROG
				    " import-cert NAME FILE'",
				    when);
		else
			add_finding(fd, 0,
				    "chain certificate #%zu expired on %s — get the "
				    "current CA certificate and import the chain again",
				    pos, when);
		return;
	}
	if (ASN1_TIME_diff(&days, &secs, NULL, na) == 1 && days < EXPIRY_WARN_DAYS) {
		if (pos == 0)
			add_finding(fd, 1, "certificate expires on %s (in %d days) — renew it soon",
				    when, days);
		else
			add_finding(fd, 1,
				    "chain certificate #%zu expires on %s (in %d days) — "
				    "get the CA's next certificate",
				    pos, when, days);
	}
}

/* Each certificate must be issued, and signed, by the one after it (as import-cert wants). */
static void check_chain(struct findings *fd, X509 **certs, size_t n, time_t now)
{
	size_t i;

	for (i = 1; i < n; i++)
		if (certs[i] != NULL)
			check_validity(fd, certs[i], i, now);
	for (i = 0; i + 1 < n; i++) {
		if (certs[i] == NULL || certs[i + 1] == NULL)
			continue;
		if (!certcheck_issued_by(certs[i], certs[i + 1]))
			add_finding(fd, 0,
				    "certificate #%zu is not issued by certificate #%zu — "
				    "import the chain leaf first, each certificate followed "
				    "by its issuer",
				    i, i + 1);
	}
}

/* Whether the chain (leaf first) verifies up to an anchor in store; *err gets the reason. */
static int chain_verifies(X509_STORE *store, X509 **certs, size_t n, int *err, int *depth)
{
	STACK_OF(X509) *untrusted = sk_X509_new_null();
	X509_STORE_CTX *ctx = X509_STORE_CTX_new();
	size_t i;
	int ok = -1;

	*err = X509_V_ERR_UNSPECIFIED;
	*depth = 0;
	if (untrusted == NULL || ctx == NULL)
		goto out;
	for (i = 1; i < n; i++)
		if (certs[i] != NULL && !sk_X509_push(untrusted, certs[i]))
			goto out;
	if (!X509_STORE_CTX_init(ctx, store, certs[0], untrusted))
		goto out;
	/* Validity and usages have their own findings. */
	X509_STORE_CTX_set_flags(ctx, X509_V_FLAG_NO_CHECK_TIME);
	ok = X509_verify_cert(ctx) == 1;
	if (!ok) {
		*err = X509_STORE_CTX_get_error(ctx);
		*depth = X509_STORE_CTX_get_error_depth(ctx);
	}
out:
	X509_STORE_CTX_free(ctx);
	sk_X509_free(untrusted);
	return ok;
}

/*
 * Up to a trust anchor: the --ca file when given; else a leaf-only chain that does not
 * verify against OpenSSL's default store is suspect (a leaf-and-intermediates chain
 * without the root is the normal case and cannot be judged without the anchor).
 */
static void check_trust(struct doctor *d, struct findings *fd, X509 **certs, size_t n)
{
	int err, depth, r;

	if (d->anchors != NULL) {
		if ((r = chain_verifies(d->anchors, certs, n, &err, &depth)) < 0)
			fd->nomem = 1;
		else if (r == 0)
			add_finding(
				fd, 0,
				"chain does not lead to a trust anchor in %s (%s, at certificate "
				"#%d) — append the missing intermediate certificate(s) after the "
				"leaf and import the chain again: '" PROG " import-cert NAME FILE'",
				d->ca_file, X509_verify_cert_error_string(err), depth);
		return;
	}
	if (n != 1 || X509_check_issued(certs[0], certs[0]) == X509_V_OK)
		return;
	if (!d->system_tried) {
		d->system_tried = 1;
		if ((d->system = X509_STORE_new()) != NULL &&
		    X509_STORE_set_default_paths(d->system) != 1) {
			X509_STORE_free(d->system);
			d->system = NULL;
		}
		ERR_clear_error();
	}
	if (d->system != NULL && chain_verifies(d->system, certs, n, &err, &depth) == 1)
		return;
	add_finding(fd, 1,
		    "the chain is only the leaf certificate: unless a root CA the servers trust "
		    "issued it directly, append the intermediate certificate(s) and import the "
		    "chain again — '" PROG " check --ca ROOT.pem' tells for sure");
}

/* What import-cert (certcheck_leaf) would refuse, each reason with its remedy. */
static void check_leaf(struct findings *fd, const struct mtls_agent_identity *id, X509 *leaf,
		       time_t now)
{
	unsigned flaws = certcheck_flaws(leaf, now);
	uint8_t *der = NULL;
	size_t len = 0;

	if (id->key_type != MTLS_AGENT_KEY_NONE) {
		if (certcheck_spki(leaf, &der, &len) != 0 || len != id->spki_len ||
		    memcmp(der, id->spki, id->spki_len) != 0)
			add_finding(fd, 0,
				    "certificate is for a different key than the identity's — "
				    "import the certificate issued for this key, or make a new CSR "
				    "with '" PROG " csr NAME --subject DN'");
		OPENSSL_free(der);
	}
	if ((flaws & CERTCHECK_BAD_EXTENSIONS) != 0)
		add_finding(fd, 0,
			    "certificate has malformed extensions — ask the CA for a new "
			    "certificate");
	if ((flaws & CERTCHECK_NO_CLIENT_AUTH) != 0)
		add_finding(fd, 0,
			    "certificate lacks extendedKeyUsage clientAuth — servers "
			    "refuse it for client authentication; ask the CA for a TLS "
			    "client certificate");
	if ((flaws & CERTCHECK_NO_DIGITAL_SIGNATURE) != 0)
		add_finding(fd, 0,
			    "certificate lacks keyUsage digitalSignature — ask the CA for a "
			    "certificate that allows digitalSignature");
	check_validity(fd, leaf, 0, now);
}

static const char *or_unknown(const char *s)
{
	return s != NULL ? s : "?";
}

/*
 * The agent's own revocation check of the certificate (status field "revocation"); renews:
 * whether the identity renews (status field "renew"), else only an import replaces it.
 */
static void check_revocation(struct findings *fd, const char *revocation, int renews)
{
	if (revocation != NULL && strncmp(revocation, "revoked", 7) == 0 && !renews)
		add_finding(fd, 0,
			    "certificate %s — no renewal is configured: import a new certificate "
			    "(mtls-agentctl import-cert); the revoked one is served until then",
			    revocation);
	else if (revocation != NULL && strncmp(revocation, "revoked", 7) == 0)
		add_finding(fd, 0, "certificate %s — the agent is re-enrolling; see last-result",
			    revocation);
	else if (revocation != NULL && strncmp(revocation, "unknown", 7) == 0)
		add_finding(fd, 1, "revocation status %s — the certificate is still served",
			    revocation);
}

/* Automated renewal that needs an operator, or keeps failing; a revoked certificate. */
static void check_renewal_state(struct findings *fd, const struct mtls_agent_status_record *rec)
{
	const char *action = status_field(rec, "action");
	const char *failures = status_field(rec, "failures");

	check_revocation(fd, status_field(rec, "revocation"), status_field(rec, "renew") != NULL);
	if (action != NULL)
		add_finding(fd, 0, "renewal: %s", action);
	else if (failures != NULL && strcmp(failures, "0") != 0)
		add_finding(fd, 1, "renewal failing (%s attempts in a row): %s — next attempt %s",
			    failures, or_unknown(status_field(rec, "last-result")),
			    or_unknown(status_field(rec, "next-renewal")));
}

/* A keystore that does not work: say that, not what it hides (key "missing"). */
static void check_keystore_of(struct doctor *d, struct findings *fd, const char *state,
			      const char *ks)
{
	const struct mtls_agent_status_record *ksrec = status_record(d->st, "keystore", ks);
	const char *ks_state = status_field(ksrec, "state");
	char prefix[128];

	if (ks_state != NULL && strcmp(ks_state, "ok") != 0) {
		add_finding(fd, 0,
			    "not usable while keystore %s is not (see its line) — fix the keystore "
			    "first",
			    ks);
		return;
	}
	snprintf(prefix, sizeof(prefix), "keystore %s: ", ks != NULL ? ks : "?");
	add_keystore_state(fd, prefix, state, status_field(ksrec, "type"), ks != NULL ? ks : "?",
			   d->st != NULL && d->st->caller_is_admin);
}

/* No key, or one whose certificate does not match it. 0: go on with the certificate. */
static int check_no_key(struct findings *fd, const struct mtls_agent_identity *id,
			const char *state)
{
	int say = state != NULL && strncmp(state, "no key ", 7) == 0;

	if (id->chain_len == 0 || state == NULL ||
	    strstr(state, "matches none of the identity") == NULL) {
		add_finding(fd, 0,
			    "no key%s%s%s — create one with '" PROG " keygen NAME --type ec-p256'",
			    say ? " (" : "", say ? state : "", say ? ")" : "");
		return -1;
	}
	add_finding(fd, 0,
		    "certificate and key do not match: %s — import the certificate issued for this "
		    "identity's key ('" PROG " import-cert NAME FILE'), or get a new one ('" PROG
		    " csr NAME --subject DN')",
		    state);
	return 0;
}

/* The key the agent reports: parses, strong enough, signs with some scheme. */
static void check_key(struct findings *fd, const struct mtls_agent_identity *id)
{
	EVP_PKEY *pk;
	int weak = 0;

	if ((pk = spki_decode(id->spki, id->spki_len)) == NULL) {
		add_finding(
			fd, 0,
			"the agent reports a public key that does not parse — check the keystore "
			"('" PROG " status')");
	} else if (EVP_PKEY_get_base_id(pk) == EVP_PKEY_RSA && EVP_PKEY_get_bits(pk) < 2048) {
		add_finding(
			fd, 0,
			"RSA key of %d bits is too weak — make a new key with '" PROG
			" keygen NAME --type rsa-2048' (or ec-p256) and get a certificate for it",
			EVP_PKEY_get_bits(pk));
		weak = 1; /* which is also why the agent signs with no scheme */
	}
	EVP_PKEY_free(pk);
	if (id->n_schemes == 0 && !weak)
		add_finding(
			fd, 0,
			"the agent offers no signature scheme for this key — check the key type "
			"and the keystore ('" PROG " status')");
}

/* No certificate: why, and how to get one. */
static void check_no_certificate(struct findings *fd, const char *state)
{
	if (state != NULL && strcmp(state, "ok") != 0 &&
	    strcmp(state, "no certificate installed") != 0)
		add_finding(fd, 0,
			    "certificate not usable: %s — import a valid one with '" PROG
			    " import-cert NAME FILE'",
			    state);
	else
		add_finding(fd, 0,
			    "no certificate — make a CSR with '" PROG
			    " csr NAME --subject DN', have "
			    "the CA sign it, then '" PROG " import-cert NAME FILE'");
}

/* The chain: each certificate parses; the leaf, the order and the trust. */
static void check_certificates(struct doctor *d, struct findings *fd,
			       const struct mtls_agent_identity *id)
{
	X509 **certs;
	time_t now = time(NULL);
	size_t i;

	if ((certs = calloc(id->chain_len, sizeof(*certs))) == NULL) {
		fd->nomem = 1;
		return;
	}
	for (i = 0; i < id->chain_len; i++) {
		certs[i] = cert_decode(id->chain[i].der, id->chain[i].len);
		if (certs[i] == NULL && i == 0)
			add_finding(fd, 0,
				    "certificate does not parse — import a valid one with '" PROG
				    " import-cert NAME FILE'");
		else if (certs[i] == NULL)
			add_finding(
				fd, 0,
				"chain certificate #%zu does not parse — import the chain again",
				i);
	}
	if (certs[0] != NULL) {
		check_leaf(fd, id, certs[0], now);
		check_chain(fd, certs, id->chain_len, now);
		check_trust(d, fd, certs, id->chain_len);
	}
	for (i = 0; i < id->chain_len; i++)
		X509_free(certs[i]);
	free(certs);
}

void check_identity(struct doctor *d, struct findings *fd, const struct mtls_agent_identity *id)
{
	const struct mtls_agent_status_record *rec = status_record(d->st, "identity", id->name);
	const char *state = status_field(rec, "state");

	if (rec != NULL)
		check_renewal_state(fd, rec);
	if (state != NULL && !identity_own_state(state)) {
		check_keystore_of(d, fd, state, status_field(rec, "keystore"));
		return;
	}
	if (id->key_type == MTLS_AGENT_KEY_NONE) {
		if (check_no_key(fd, id, state) != 0)
			return;
	} else {
		check_key(fd, id);
	}
	/* The certificate file on disk was replaced by something the agent would not
	 * take (it keeps serving the certificate it read before): the file is wrong. */
	if (id->chain_len > 0 && state != NULL &&
	    strstr(state, "still serving the certificate read before") != NULL)
		add_finding(fd, 0,
			    "%s — put a valid certificate there, or import one with '" PROG
			    " import-cert NAME FILE'",
			    state);
	if (id->chain_len == 0)
		check_no_certificate(fd, state);
	else
		check_certificates(d, fd, id);
}
