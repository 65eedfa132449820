/*
 * CA certificate refresh for renewal (issue 10): the trust anchors in force
 * for an identity are its configured ca-trust plus the successors accepted
 * since (<state-dir>/<identity>.ca-next). Before each EST renewal the CA's
 * current certificates are fetched from /cacerts (RFC 7030 §4.1.3); after
 * each CMP KUR the CA is asked for a root CA key update (RFC 9480 4.3,
 * renew/enroll-cmp.c), and an IR's caPubs are offered the same way.
 *
 * A new root (self-signed CA certificate) in /cacerts is accepted only when
 * the same answer holds its link certificate, "NewWithOld": same subject,
 * same public key, issued directly by an anchor already in force (no
 * intermediate in between: an intermediate's key must not be able to make a
 * root). Anything else is refused with a warning and never trusted. The link
 * is kept beside the root (<identity>.ca-links) and re-checked at every load,
 * so a root removed from ca-trust takes the successors it vouched for along. The CA's
 * intermediates are returned for the chain of the next certificate, so an
 * installed chain holds the intermediates in force even when the CA's
 * enrollment answer carries the issued certificate alone.
 */
#ifndef MTLS_AGENT_CACERTS_H
#define MTLS_AGENT_CACERTS_H

#include <stddef.h>

#include <openssl/x509.h>

#include "agent/state.h"

/*
 * The anchors in force for id (ca-trust, then accepted successors) as a new
 * store, or NULL with err set when ca-trust cannot be loaded.
 */
X509_STORE *cacerts_trust_store(struct identity_rt *id, char *err, size_t errlen);

/*
 * A PEM file holding the anchors in force, for libcurl and OpenSSL's CMP
 * client: ca-trust itself while no successor is in force, else
 * <state-dir>/<identity>.trust (ca-trust + successors), rewritten from them
 * at each call. Caller frees; NULL without memory.
 */
char *cacerts_trust_file(struct identity_rt *id);

/*
 * Fetches cacerts from id's EST CA, accepts new roots as above and returns
 * the CA's intermediates (caller frees with sk_X509_pop_free), or NULL when
 * the CA cannot be reached or sent none (logged; renewal goes on without).
 */
STACK_OF(X509) * cacerts_refresh(struct identity_rt *id);

/*
 * A CMP root CA key update (RFC 9480 4.3): new_with_new (the new root) is
 * accepted only when it is a self-signed CA certificate valid now and
 * new_with_old (its name and key, signed by the old root) was issued directly
 * by an anchor in force; then it is kept like an EST successor. 1 accepted,
 * 0 already in force, -1 refused (one warning says why) or not kept.
 */
int cacerts_root_update(struct identity_rt *id, X509 *new_with_new, X509 *new_with_old);

/*
 * The root the CA is asked to update (CMP id-it-rootCaCert): the newest
 * successor in force, else the first self-signed certificate of ca-trust;
 * NULL if none. Caller frees.
 */
X509 *cacerts_current_root(struct identity_rt *id);

/*
 * CA certificates a CA sent on its own (CMP caPubs, source names it in the
 * log): a new root among them is accepted as from /cacerts above, only
 * through its link certificate among the same certificates.
 */
void cacerts_offered(struct identity_rt *id, STACK_OF(X509) * certs, const char *source);

/*
 * The decisions cacerts_refresh() takes on an answer (certs, in the order the
 * CA sent them), without files or the network, for fuzz/est_answer_fuzzer.c:
 * whether x is a new root (self-signed CA certificate not among anchors); the
 * certificate of certs that links root to anchors (NewWithOld, as
 * cacerts_link_issued_by(): not self-signed, root's subject and key, a CA,
 * issued and signed directly by an anchor; its validity at the current time
 * when check_time), or NULL; and the intermediates (CA certificates neither
 * self-signed nor named like a root of the answer), appended to inter with a
 * reference each.
 */
int cacerts_is_new_root(X509 *x, STACK_OF(X509) * anchors);
int cacerts_link_issued_by(STACK_OF(X509) * anchors, X509 *link, X509 *root, int check_time);
X509 *cacerts_find_link(STACK_OF(X509) * certs, STACK_OF(X509) * anchors, X509 *root,
			int check_time);
void cacerts_add_intermediates(STACK_OF(X509) * certs, STACK_OF(X509) * inter);

#endif
