// S3 endpoint URLs as users give them (--endpoint, AWS_ENDPOINT_URL): checked up front, so a
// typo is a usage error rather than a TypeError from deep inside the SDK, and never echoed with
// the user:password@ part a URL may carry.

/** Why `text` is not a usable endpoint (http or https, with a host), or undefined if it is. */
export function endpointProblem(text: string): string | undefined {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    return 'is not a URL';
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') return `has scheme ${url.protocol.slice(0, -1)}, not http or https`;
  if (url.hostname === '') return 'names no host';
  return undefined;
}

/** `text` with any URL's user:password@ part replaced by "***@". */
export function redactUserinfo(text: string): string {
  return text.replace(/(\/\/)[^/@\s]*@/g, '$1***@');
}
