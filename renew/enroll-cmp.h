/*
 * What enroll_cmp() (declared in renew/enroll.h) does with a CA's answer once
 * OpenSSL's CMP client has parsed and checked it, without the transaction, for
 * fuzz/cmp_answer_fuzzer.c. The answer is the CA's data: none of these trusts it.
 */
#ifndef MTLS_AGENT_ENROLL_CMP_H
#define MTLS_AGENT_ENROLL_CMP_H

#include <openssl/x509.h>

#include "renew/enroll.h"

/*
 * The candidates for the issued certificate's path, handed to stage(): cert
 * first, then extraCerts, caPubs and own (our intermediates), each with a
 * reference of its own (free with sk_X509_pop_free); NULL without memory.
 */
STACK_OF(X509) * cmp_candidate_chain(X509 *cert, STACK_OF(X509) * extra, STACK_OF(X509) * capubs,
				     STACK_OF(X509) * own);

/*
 * Whether signer, whose certificate chained to ca-trust, may answer for the
 * CA: pinned in ca-signer (pins), an id-kp-cmcRA/cmcCA extended key usage, or
 * the issuer of the leaf of own_chain.
 */
int cmp_signer_may_answer(X509 *signer, STACK_OF(X509) * pins, STACK_OF(X509) * own_chain);

/*
 * The outcome of a rejection: status is OpenSSL's text of the PKIStatusInfo
 * (the CA's statusString in it; NULL: "rejection"), quoted escaped in
 * res->msg; fail_info its failInfo bits.
 */
void cmp_rejected(const char *what, const char *status, int fail_info, struct enroll_result *res);

#endif
