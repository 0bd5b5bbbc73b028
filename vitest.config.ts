import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // A safety net for a hung test, not a deadline: tests wait for events, never for time, and on a
    // machine whose cores are busy with other work a heavy test (Ceph RGW, a crash loop, a real
    // file system through nbdfuse) can take ten times as long as on a quiet one.
    testTimeout: 300_000,
    hookTimeout: 300_000,
    // The SDK warns on Node 20 that its releases from 2027 on need Node 22; the lockfile pins this one.
    // Repositories the command line creates in tests are encrypted, with this password and cheap
    // keys (a key derivation per command would cost half a second each); tests of plain ones
    // pass --insecure-no-encryption or create them through core's init without a password.
    env: { AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true', CDP_S3_PASSWORD: 'cdp-s3 test password', CDP_S3_INSECURE_TEST_KDF: '1' },
  },
});
