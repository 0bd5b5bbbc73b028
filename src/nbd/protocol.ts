// NBD wire constants (NetworkBlockDevice/nbd doc/proto.md). Everything on the wire is big-endian.
// Only what the server speaks is here: fixed newstyle handshake, simple replies.

/** 'NBDMAGIC' then 'IHAVEOPT': the first 16 bytes the server sends. */
export const NBDMAGIC = Buffer.from('NBDMAGIC', 'latin1');
export const IHAVEOPT = Buffer.from('IHAVEOPT', 'latin1');
/** Magic of every option reply (64 bits). */
export const OPTION_REPLY_MAGIC = Buffer.from([0x00, 0x03, 0xe8, 0x89, 0x04, 0x55, 0x65, 0xa9]);
export const REQUEST_MAGIC = 0x25609513;
export const SIMPLE_REPLY_MAGIC = 0x67446698;

export const REQUEST_HEADER_BYTES = 28;
export const SIMPLE_REPLY_HEADER_BYTES = 16;
export const OPTION_HEADER_BYTES = 16;
export const OPTION_REPLY_HEADER_BYTES = 20;

// Handshake flags (server) and client flags.
export const FLAG_FIXED_NEWSTYLE = 1 << 0;
export const FLAG_NO_ZEROES = 1 << 1;
export const FLAG_C_FIXED_NEWSTYLE = 1 << 0;
export const FLAG_C_NO_ZEROES = 1 << 1;

// Options.
export const OPT_EXPORT_NAME = 1;
export const OPT_ABORT = 2;
export const OPT_LIST = 3;
export const OPT_STARTTLS = 5;
export const OPT_INFO = 6;
export const OPT_GO = 7;
export const OPT_STRUCTURED_REPLY = 8;
export const OPT_LIST_META_CONTEXT = 9;
export const OPT_SET_META_CONTEXT = 10;

// Option reply types.
export const REP_ACK = 1;
export const REP_SERVER = 2;
export const REP_INFO = 3;
const REP_ERR = 2 ** 31;
export const REP_ERR_UNSUP = REP_ERR + 1;
export const REP_ERR_POLICY = REP_ERR + 2;
export const REP_ERR_INVALID = REP_ERR + 3;
export const REP_ERR_UNKNOWN = REP_ERR + 6;
export const REP_ERR_SHUTDOWN = REP_ERR + 7;
export const REP_ERR_TOO_BIG = REP_ERR + 9;

// NBD_REP_INFO types.
export const INFO_EXPORT = 0;
export const INFO_NAME = 1;
export const INFO_DESCRIPTION = 2;
export const INFO_BLOCK_SIZE = 3;

// Transmission flags.
export const TFLAG_HAS_FLAGS = 1 << 0;
export const TFLAG_READ_ONLY = 1 << 1;
export const TFLAG_SEND_FLUSH = 1 << 2;
export const TFLAG_SEND_FUA = 1 << 3;
export const TFLAG_SEND_TRIM = 1 << 5;
export const TFLAG_SEND_WRITE_ZEROES = 1 << 6;
export const TFLAG_CAN_MULTI_CONN = 1 << 8;

// Commands.
export const CMD_READ = 0;
export const CMD_WRITE = 1;
export const CMD_DISC = 2;
export const CMD_FLUSH = 3;
export const CMD_TRIM = 4;
export const CMD_CACHE = 5;
export const CMD_WRITE_ZEROES = 6;
export const CMD_BLOCK_STATUS = 7;

// Command flags.
export const CMD_FLAG_FUA = 1 << 0;
export const CMD_FLAG_NO_HOLE = 1 << 1;
export const CMD_FLAG_DF = 1 << 2;
export const CMD_FLAG_REQ_ONE = 1 << 3;
export const CMD_FLAG_FAST_ZERO = 1 << 4;

/** NBD error values (the protocol's own numbering, which happens to match Linux errno). */
export const ERRNO = {
  EPERM: 1,
  EIO: 5,
  ENOMEM: 12,
  EINVAL: 22,
  ENOSPC: 28,
  EOVERFLOW: 75,
  ENOTSUP: 95,
  ESHUTDOWN: 108,
} as const;

export type NbdErrno = keyof typeof ERRNO;

export const COMMAND_NAMES: Readonly<Record<number, string>> = {
  [CMD_READ]: 'READ',
  [CMD_WRITE]: 'WRITE',
  [CMD_DISC]: 'DISC',
  [CMD_FLUSH]: 'FLUSH',
  [CMD_TRIM]: 'TRIM',
  [CMD_CACHE]: 'CACHE',
  [CMD_WRITE_ZEROES]: 'WRITE_ZEROES',
  [CMD_BLOCK_STATUS]: 'BLOCK_STATUS',
};
