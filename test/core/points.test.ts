import { describe, expect, it } from 'vitest';
import { parsePointSelector } from '../../src/core/points.js';
import { UsageError } from '../../src/errors.js';

describe('parsePointSelector', () => {
  it.each([
    ['2026-11-26T10:00:00Z', Date.UTC(2026, 10, 26, 10)],
    ['2024-02-29T23:59:59Z', Date.UTC(2024, 1, 29, 23, 59, 59)],
    ['2000-02-29', Date.UTC(2000, 1, 29)],
    ['2026-12-31T23:59:59.999+01:00', Date.UTC(2026, 11, 31, 22, 59, 59, 999)],
    ['2026-06-30 12:30-0230', Date.UTC(2026, 5, 30, 15, 0)],
  ])('takes %s', (text, time) => {
    expect(parsePointSelector(text)).toEqual({ kind: 'time', time, text });
  });

  it.each([
    ['2026-02-30T00:00:00Z', /2026-02 has 28 days/],
    ['2026-02-29', /2026-02 has 28 days/],
    ['1900-02-29T00:00:00Z', /1900-02 has 28 days/],
    ['2026-04-31T00:00:00Z', /2026-04 has 30 days/],
    ['2026-01-00T00:00:00Z', /2026-01 has 31 days/],
    ['2026-13-01T00:00:00Z', /there is no month 13/],
    ['2026-00-10', /there is no month 0/],
    ['2026-11-26T24:00:00Z', /hours go from 00 to 23/],
    ['2026-11-26T23:60:00Z', /minutes and seconds go from 00 to 59/],
    ['2026-11-26T23:59:60Z', /minutes and seconds go from 00 to 59/],
    ['2026-11-26T10:00:00+24:00', /the zone offset is out of range/],
  ])('refuses %s, which names no real instant (Date.parse would roll it over)', (text, why) => {
    expect(() => parsePointSelector(text)).toThrow(UsageError);
    expect(() => parsePointSelector(text)).toThrow(new RegExp(`^--at "${text.replace(/[.+]/g, '\\$&')}" is not a real date and time \\(${why.source}\\): give an ISO 8601 time with a zone`));
  });
});
