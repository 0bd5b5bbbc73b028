// Tests start the S3-compatible server through the same helper as local experiments.
export { startS3Server, s3ServerEnv, type S3Server, type S3ServerOptions } from '../../src/dev/s3-server.js';
