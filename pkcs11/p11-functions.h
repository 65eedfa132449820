/*
 * Functions the module does not offer, each with the signature the caller
 * expects (written out from p11-kit's pkcs11.h, PKCS#11 2.40): they answer
 * CKR_FUNCTION_NOT_SUPPORTED (C_GetFunctionStatus and C_CancelFunction:
 * CKR_FUNCTION_NOT_PARALLEL, as the standard has them). Then the function
 * list. Included once, by p11-module.c.
 */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-parameter"

static CK_RV mt_InitToken(CK_SLOT_ID slot_id, unsigned char *pin, unsigned long pin_len,
			  unsigned char *label)
{
	return CKR_FUNCTION_NOT_SUPPORTED;
}

static CK_RV mt_InitPIN(CK_SESSION_HANDLE session, unsigned char *pin, unsigned long pin_len)
{
	return CKR_FUNCTION_NOT_SUPPORTED;
}

static CK_RV mt_SetPIN(CK_SESSION_HANDLE session, unsigned char *old_pin, unsigned long old_len,
		       unsigned char *new_pin, unsigned long new_len)
{
	return CKR_FUNCTION_NOT_SUPPORTED;
}

static CK_RV mt_GetOperationState(CK_SESSION_HANDLE session, unsigned char *operation_state,
				  unsigned long *operation_state_len)
{
	return CKR_FUNCTION_NOT_SUPPORTED;
}

static CK_RV mt_SetOperationState(CK_SESSION_HANDLE session, unsigned char *operation_state,
				  unsigned long operation_state_len,
				  CK_OBJECT_HANDLE encryption_key,
				  CK_OBJECT_HANDLE authentiation_key)
{
	return CKR_FUNCTION_NOT_SUPPORTED;
}

static CK_RV mt_CreateObject(CK_SESSION_HANDLE session, CK_ATTRIBUTE_PTR templ, unsigned long count,
			     CK_OBJECT_HANDLE *object)
{
	return CKR_FUNCTION_NOT_SUPPORTED;
}

static CK_RV mt_CopyObject(CK_SESSION_HANDLE session, CK_OBJECT_HANDLE object,
			   CK_ATTRIBUTE_PTR templ, unsigned long count,
			   CK_OBJECT_HANDLE *new_object)
{
	return CKR_FUNCTION_NOT_SUPPORTED;
}

static CK_RV mt_DestroyObject(CK_SESSION_HANDLE session, CK_OBJECT_HANDLE object)
{
	return CKR_FUNCTION_NOT_SUPPORTED;
}

static CK_RV mt_SetAttributeValue(CK_SESSION_HANDLE session, CK_OBJECT_HANDLE object,
				  CK_ATTRIBUTE_PTR templ, unsigned long count)
{
	return CKR_FUNCTION_NOT_SUPPORTED;
}

static CK_RV mt_EncryptInit(CK_SESSION_HANDLE session, CK_MECHANISM_PTR mechanism,
			    CK_OBJECT_HANDLE key)
{
	return CKR_FUNCTION_NOT_SUPPORTED;
}

static CK_RV mt_Encrypt(CK_SESSION_HANDLE session, unsigned char *data, unsigned long data_len,
			unsigned char *encrypted_data, unsigned long *encrypted_data_len)
{
	return CKR_FUNCTION_NOT_SUPPORTED;
}

static CK_RV mt_EncryptUpdate(CK_SESSION_HANDLE session, unsigned char *part,
			      unsigned long part_len, unsigned char *encrypted_part,
			      unsigned long *encrypted_part_len)
{
	return CKR_FUNCTION_NOT_SUPPORTED;
}

static CK_RV mt_EncryptFinal(CK_SESSION_HANDLE session, unsigned char *last_encrypted_part,
			     unsigned long *last_encrypted_part_len)
{
	return CKR_FUNCTION_NOT_SUPPORTED;
}

static CK_RV mt_DecryptInit(CK_SESSION_HANDLE session, CK_MECHANISM_PTR mechanism,
			    CK_OBJECT_HANDLE key)
{
	return CKR_FUNCTION_NOT_SUPPORTED;
}

static CK_RV mt_Decrypt(CK_SESSION_HANDLE session, unsigned char *encrypted_data,
			unsigned long encrypted_data_len, unsigned char *data,
			unsigned long *data_len)
{
	return CKR_FUNCTION_NOT_SUPPORTED;
}

static CK_RV mt_DecryptUpdate(CK_SESSION_HANDLE session, unsigned char *encrypted_part,
			      unsigned long encrypted_part_len, unsigned char *part,
			      unsigned long *part_len)
{
	return CKR_FUNCTION_NOT_SUPPORTED;
}

static CK_RV mt_DecryptFinal(CK_SESSION_HANDLE session, unsigned char *last_part,
			     unsigned long *last_part_len)
{
	return CKR_FUNCTION_NOT_SUPPORTED;
}

static CK_RV mt_DigestKey(CK_SESSION_HANDLE session, CK_OBJECT_HANDLE key)
{
	return CKR_FUNCTION_NOT_SUPPORTED;
}

static CK_RV mt_SignRecoverInit(CK_SESSION_HANDLE session, CK_MECHANISM_PTR mechanism,
				CK_OBJECT_HANDLE key)
{
	return CKR_FUNCTION_NOT_SUPPORTED;
}

static CK_RV mt_SignRecover(CK_SESSION_HANDLE session, unsigned char *data, unsigned long data_len,
			    unsigned char *signature, unsigned long *signature_len)
{
	return CKR_FUNCTION_NOT_SUPPORTED;
}

static CK_RV mt_VerifyInit(CK_SESSION_HANDLE session, CK_MECHANISM_PTR mechanism,
			   CK_OBJECT_HANDLE key)
{
	return CKR_FUNCTION_NOT_SUPPORTED;
}

static CK_RV mt_Verify(CK_SESSION_HANDLE session, unsigned char *data, unsigned long data_len,
		       unsigned char *signature, unsigned long signature_len)
{
	return CKR_FUNCTION_NOT_SUPPORTED;
}

static CK_RV mt_VerifyUpdate(CK_SESSION_HANDLE session, unsigned char *part, unsigned long part_len)
{
	return CKR_FUNCTION_NOT_SUPPORTED;
}

static CK_RV mt_VerifyFinal(CK_SESSION_HANDLE session, unsigned char *signature,
			    unsigned long signature_len)
{
	return CKR_FUNCTION_NOT_SUPPORTED;
}

static CK_RV mt_VerifyRecoverInit(CK_SESSION_HANDLE session, CK_MECHANISM_PTR mechanism,
				  CK_OBJECT_HANDLE key)
{
	return CKR_FUNCTION_NOT_SUPPORTED;
}

static CK_RV mt_VerifyRecover(CK_SESSION_HANDLE session, unsigned char *signature,
			      unsigned long signature_len, unsigned char *data,
			      unsigned long *data_len)
{
	return CKR_FUNCTION_NOT_SUPPORTED;
}

static CK_RV mt_DigestEncryptUpdate(CK_SESSION_HANDLE session, unsigned char *part,
				    unsigned long part_len, unsigned char *encrypted_part,
				    unsigned long *encrypted_part_len)
{
	return CKR_FUNCTION_NOT_SUPPORTED;
}

static CK_RV mt_DecryptDigestUpdate(CK_SESSION_HANDLE session, unsigned char *encrypted_part,
				    unsigned long encrypted_part_len, unsigned char *part,
				    unsigned long *part_len)
{
	return CKR_FUNCTION_NOT_SUPPORTED;
}

static CK_RV mt_SignEncryptUpdate(CK_SESSION_HANDLE session, unsigned char *part,
				  unsigned long part_len, unsigned char *encrypted_part,
				  unsigned long *encrypted_part_len)
{
	return CKR_FUNCTION_NOT_SUPPORTED;
}

static CK_RV mt_DecryptVerifyUpdate(CK_SESSION_HANDLE session, unsigned char *encrypted_part,
				    unsigned long encrypted_part_len, unsigned char *part,
				    unsigned long *part_len)
{
	return CKR_FUNCTION_NOT_SUPPORTED;
}

static CK_RV mt_GenerateKey(CK_SESSION_HANDLE session, CK_MECHANISM_PTR mechanism,
			    CK_ATTRIBUTE_PTR templ, unsigned long count, CK_OBJECT_HANDLE *key)
{
	return CKR_FUNCTION_NOT_SUPPORTED;
}

static CK_RV mt_GenerateKeyPair(CK_SESSION_HANDLE session, CK_MECHANISM_PTR mechanism,
				CK_ATTRIBUTE_PTR public_key_template,
				unsigned long public_key_attribute_count,
				CK_ATTRIBUTE_PTR private_key_template,
				unsigned long private_key_attribute_count,
				CK_OBJECT_HANDLE *public_key, CK_OBJECT_HANDLE *private_key)
{
	return CKR_FUNCTION_NOT_SUPPORTED;
}

static CK_RV mt_WrapKey(CK_SESSION_HANDLE session, CK_MECHANISM_PTR mechanism,
			CK_OBJECT_HANDLE wrapping_key, CK_OBJECT_HANDLE key,
			unsigned char *wrapped_key, unsigned long *wrapped_key_len)
{
	return CKR_FUNCTION_NOT_SUPPORTED;
}

static CK_RV mt_UnwrapKey(CK_SESSION_HANDLE session, CK_MECHANISM_PTR mechanism,
			  CK_OBJECT_HANDLE unwrapping_key, unsigned char *wrapped_key,
			  unsigned long wrapped_key_len, CK_ATTRIBUTE_PTR templ,
			  unsigned long attribute_count, CK_OBJECT_HANDLE *key)
{
	return CKR_FUNCTION_NOT_SUPPORTED;
}

static CK_RV mt_DeriveKey(CK_SESSION_HANDLE session, CK_MECHANISM_PTR mechanism,
			  CK_OBJECT_HANDLE base_key, CK_ATTRIBUTE_PTR templ,
			  unsigned long attribute_count, CK_OBJECT_HANDLE *key)
{
	return CKR_FUNCTION_NOT_SUPPORTED;
}

static CK_RV mt_SeedRandom(CK_SESSION_HANDLE session, unsigned char *seed, unsigned long seed_len)
{
	return CKR_FUNCTION_NOT_SUPPORTED;
}

static CK_RV mt_GenerateRandom(CK_SESSION_HANDLE session, unsigned char *random_data,
			       unsigned long random_len)
{
	return CKR_FUNCTION_NOT_SUPPORTED;
}

static CK_RV mt_GetFunctionStatus(CK_SESSION_HANDLE session)
{
	return CKR_FUNCTION_NOT_PARALLEL;
}

static CK_RV mt_CancelFunction(CK_SESSION_HANDLE session)
{
	return CKR_FUNCTION_NOT_PARALLEL;
}

static CK_RV mt_WaitForSlotEvent(CK_FLAGS flags, CK_SLOT_ID *slot, void *reserved)
{
	return CKR_FUNCTION_NOT_SUPPORTED;
}

#pragma GCC diagnostic pop

static CK_FUNCTION_LIST function_list = {
	.version = {CRYPTOKI_VERSION_MAJOR, CRYPTOKI_VERSION_MINOR},
	.C_Initialize = mt_Initialize,
	.C_Finalize = mt_Finalize,
	.C_GetInfo = mt_GetInfo,
	.C_GetFunctionList = mt_GetFunctionList,
	.C_GetSlotList = mt_GetSlotList,
	.C_GetSlotInfo = mt_GetSlotInfo,
	.C_GetTokenInfo = mt_GetTokenInfo,
	.C_GetMechanismList = mt_GetMechanismList,
	.C_GetMechanismInfo = mt_GetMechanismInfo,
	.C_InitToken = mt_InitToken,
	.C_InitPIN = mt_InitPIN,
	.C_SetPIN = mt_SetPIN,
	.C_OpenSession = mt_OpenSession,
	.C_CloseSession = mt_CloseSession,
	.C_CloseAllSessions = mt_CloseAllSessions,
	.C_GetSessionInfo = mt_GetSessionInfo,
	.C_GetOperationState = mt_GetOperationState,
	.C_SetOperationState = mt_SetOperationState,
	.C_Login = mt_Login,
	.C_Logout = mt_Logout,
	.C_CreateObject = mt_CreateObject,
	.C_CopyObject = mt_CopyObject,
	.C_DestroyObject = mt_DestroyObject,
	.C_GetObjectSize = mt_GetObjectSize,
	.C_GetAttributeValue = mt_GetAttributeValue,
	.C_SetAttributeValue = mt_SetAttributeValue,
	.C_FindObjectsInit = mt_FindObjectsInit,
	.C_FindObjects = mt_FindObjects,
	.C_FindObjectsFinal = mt_FindObjectsFinal,
	.C_EncryptInit = mt_EncryptInit,
	.C_Encrypt = mt_Encrypt,
	.C_EncryptUpdate = mt_EncryptUpdate,
	.C_EncryptFinal = mt_EncryptFinal,
	.C_DecryptInit = mt_DecryptInit,
	.C_Decrypt = mt_Decrypt,
	.C_DecryptUpdate = mt_DecryptUpdate,
	.C_DecryptFinal = mt_DecryptFinal,
	.C_DigestInit = mt_DigestInit,
	.C_Digest = mt_Digest,
	.C_DigestUpdate = mt_DigestUpdate,
	.C_DigestKey = mt_DigestKey,
	.C_DigestFinal = mt_DigestFinal,
	.C_SignInit = mt_SignInit,
	.C_Sign = mt_Sign,
	.C_SignUpdate = mt_SignUpdate,
	.C_SignFinal = mt_SignFinal,
	.C_SignRecoverInit = mt_SignRecoverInit,
	.C_SignRecover = mt_SignRecover,
	.C_VerifyInit = mt_VerifyInit,
	.C_Verify = mt_Verify,
	.C_VerifyUpdate = mt_VerifyUpdate,
	.C_VerifyFinal = mt_VerifyFinal,
	.C_VerifyRecoverInit = mt_VerifyRecoverInit,
	.C_VerifyRecover = mt_VerifyRecover,
	.C_DigestEncryptUpdate = mt_DigestEncryptUpdate,
	.C_DecryptDigestUpdate = mt_DecryptDigestUpdate,
	.C_SignEncryptUpdate = mt_SignEncryptUpdate,
	.C_DecryptVerifyUpdate = mt_DecryptVerifyUpdate,
	.C_GenerateKey = mt_GenerateKey,
	.C_GenerateKeyPair = mt_GenerateKeyPair,
	.C_WrapKey = mt_WrapKey,
	.C_UnwrapKey = mt_UnwrapKey,
	.C_DeriveKey = mt_DeriveKey,
	.C_SeedRandom = mt_SeedRandom,
	.C_GenerateRandom = mt_GenerateRandom,
	.C_GetFunctionStatus = mt_GetFunctionStatus,
	.C_CancelFunction = mt_CancelFunction,
	.C_WaitForSlotEvent = mt_WaitForSlotEvent,
};
