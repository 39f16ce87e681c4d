// Summaries of per-round figures: medians with their spread, ratios taken round by round,
// and least-squares slopes for per-connection memory.

/** A figure over rounds: median and range. */
export interface Summary {
  median: number
  min: number
  max: number
  /** Interquartile range (0 with fewer than 4 rounds: min-max is the spread to read then). */
  iqr: number
  n: number
}

/** Linear interpolation quantile of sorted values, q in [0, 1]. */
function quantile (sorted: number[], q: number): number {
  const pos = (sorted.length - 1) * q
  const lo = Math.floor(pos)
  const hi = Math.ceil(pos)
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo)
}

/** Median and spread of the finite values; null when there are none. */
export function summarize (values: ReadonlyArray<number | null | undefined>): Summary | null {
  const sorted = values.filter((v): v is number => typeof v === 'number' && Number.isFinite(v)).sort((a, b) => a - b)
  if (sorted.length === 0) return null
  return {
    median: quantile(sorted, 0.5),
    min: sorted[0],
    max: sorted[sorted.length - 1],
    iqr: sorted.length >= 4 ? quantile(sorted, 0.75) - quantile(sorted, 0.25) : 0,
    n: sorted.length
  }
}

/**
 * Ratio a/b computed per round (each round's systems ran back to back, so drift between
 * rounds cancels), then summarized.
 */
export function roundRatios (a: ReadonlyArray<number | null | undefined>, b: ReadonlyArray<number | null | undefined>): Summary | null {
  const ratios: number[] = []
  for (let i = 0; i < Math.min(a.length, b.length); i++) {
    const x = a[i]
    const y = b[i]
    if (typeof x === 'number' && typeof y === 'number' && y !== 0) ratios.push(x / y)
  }
  return summarize(ratios)
}

/** Least-squares slope and intercept of y over x. */
export function fitLine (points: ReadonlyArray<readonly [number, number]>): { slope: number, intercept: number } {
  const n = points.length
  if (n < 2) throw new Error('fitLine needs two points at least')
  let sx = 0
  let sy = 0
  for (const [x, y] of points) {
    sx += x
    sy += y
  }
  const mx = sx / n
  const my = sy / n
  let sxy = 0
  let sxx = 0
  for (const [x, y] of points) {
    sxy += (x - mx) * (y - my)
    sxx += (x - mx) ** 2
  }
  const slope = sxy / sxx
  return { slope, intercept: my - slope * mx }
}
