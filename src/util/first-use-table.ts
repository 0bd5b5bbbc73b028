// A list of distinct values in the order each was first added, with each one's index in it: the
// page-local and root-level pack tables of the format, which must list every pack once, in the
// order of first use, so the same entries always encode to the same bytes.

export class FirstUseTable<T> {
  readonly values: T[] = [];
  private readonly index = new Map<T, number>();

  /** The value's index, adding it at the end if it is new. */
  indexOf(value: T): number {
    let at = this.index.get(value);
    if (at === undefined) {
      at = this.values.length;
      this.values.push(value);
      this.index.set(value, at);
    }
    return at;
  }
}
