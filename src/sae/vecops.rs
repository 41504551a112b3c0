//! Dense vector arithmetic of SAE training (hand-written: the sparse gradients of
//! `train.rs` touch a few rows at a time, where tensor ops would allocate per row).

/// Returns row `id` of a row-major `[_, d]` matrix.
pub(super) fn row_of(w: &[f32], id: u32, d: usize) -> &[f32] {
    let j = id as usize;
    &w[j * d..(j + 1) * d]
}

/// `y += a * x`
pub(super) fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    for (yv, &xv) in y.iter_mut().zip(x) {
        *yv += a * xv;
    }
}

pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Returns `sum ||row - mean||^2` over the rows of `data`.
pub(crate) fn total_variance(data: &[f32], d: usize) -> f64 {
    let rows = data.len() / d;
    if rows == 0 {
        return 0.0;
    }
    let mut mean = vec![0f64; d];
    for row in data.chunks_exact(d) {
        for (acc, &v) in mean.iter_mut().zip(row) {
            *acc += f64::from(v);
        }
    }
    for v in &mut mean {
        *v /= rows as f64;
    }
    data.chunks_exact(d)
        .map(|row| {
            row.iter()
                .zip(&mean)
                .map(|(&v, mu)| (f64::from(v) - mu).powi(2))
                .sum::<f64>()
        })
        .sum()
}

/// Scales every row of a row-major `[_, d]` matrix to unit norm (zero rows stay zero).
pub(super) fn normalise_rows(w: &mut [f32], d: usize) {
    for row in w.chunks_exact_mut(d) {
        let norm = dot(row, row).sqrt();
        let inv = 1.0 / (norm + f32::EPSILON);
        for v in row {
            *v *= inv;
        }
    }
}

/// Removes from each decoder-row gradient its component along the (unit) row, so the step moves
/// rows on the sphere instead of fighting the renormalisation.
pub(super) fn remove_parallel_component(grad: &mut [f32], w: &[f32], d: usize) {
    for (g, row) in grad.chunks_exact_mut(d).zip(w.chunks_exact(d)) {
        let p = dot(g, row);
        axpy(-p, row, g);
    }
}
