// Ports the servers module consumes; the composition root wires them to the config module's keyring.
export interface SecretSealer {
  seal(plaintext: string, aad: string): { sealed: Buffer; keyId: string };
  open(sealed: Buffer | Uint8Array, keyId: string, aad: string): string;
}
