//! A deliberately simple, independent implementation: plain loops, no blocking, no
//! log-domain tricks, no shared code with the crate.

pub type Mat = Vec<Vec<f64>>;

pub fn cos(a: &[f64], b: &[f64]) -> f64 {
    let mut ab = 0.0;
    let mut aa = 0.0;
    let mut bb = 0.0;
    for t in 0..a.len() {
        ab += a[t] * b[t];
        aa += a[t] * a[t];
        bb += b[t] * b[t];
    }
    ab / (aa.sqrt() * bb.sqrt())
}

pub fn cos_matrix(a: &Mat, b: &Mat) -> Mat {
    a.iter()
        .map(|x| b.iter().map(|y| cos(x, y)).collect())
        .collect()
}

/// softmax(x / tau) without max-shifting (fine for |x/tau| < ~700).
pub fn softmax(x: &[f64], tau: f64) -> Vec<f64> {
    let e: Vec<f64> = x.iter().map(|v| (v / tau).exp()).collect();
    let z: f64 = e.iter().sum();
    e.iter().map(|v| v / z).collect()
}

/// KL(p || q) = Σ p ln(p/q).
pub fn kl(p: &[f64], q: &[f64]) -> f64 {
    p.iter()
        .zip(q)
        .filter(|(a, _)| **a > 0.0)
        .map(|(a, b)| a * (a / b).ln())
        .sum()
}

/// A(i) for every fact; `prior` selects j < i instead of j != i; `paper` selects KL(P_r||P_k).
pub fn scores(k: &Mat, r: &Mat, tau: f64, prior: bool, paper: bool) -> Vec<f64> {
    let n = k.len();
    let sk = cos_matrix(k, k);
    let sr = cos_matrix(r, r);
    (0..n)
        .map(|i| {
            let js: Vec<usize> = (0..n)
                .filter(|&j| if prior { j < i } else { j != i })
                .collect();
            if js.is_empty() {
                return 0.0;
            }
            let pk = softmax(&js.iter().map(|&j| sk[i][j]).collect::<Vec<_>>(), tau);
            let pr = softmax(&js.iter().map(|&j| sr[i][j]).collect::<Vec<_>>(), tau);
            if paper {
                kl(&pr, &pk)
            } else {
                kl(&pk, &pr)
            }
        })
        .collect()
}

/// Targets of fact i: (s_k over j<i, P_k, top indices sorted by decreasing cosine then index,
/// their weights).
pub fn targets(
    k: &Mat,
    i: usize,
    tau: f64,
    m: usize,
) -> (Vec<f64>, Vec<f64>, Vec<usize>, Vec<f64>) {
    let sk: Vec<f64> = (0..i).map(|j| cos(&k[i], &k[j])).collect();
    let pk = if i == 0 { vec![] } else { softmax(&sk, tau) };
    let mut order: Vec<usize> = (0..i).collect();
    // Insertion sort by (cosine desc, index asc).
    for a in 1..order.len() {
        let mut b = a;
        while b > 0 && (sk[order[b]] > sk[order[b - 1]]) {
            order.swap(b, b - 1);
            b -= 1;
        }
    }
    order.truncate(m.min(i));
    let top_cos: Vec<f64> = order.iter().map(|&j| sk[j]).collect();
    let w = if order.is_empty() {
        vec![]
    } else {
        softmax(&top_cos, tau)
    };
    (sk, pk, order, w)
}

pub fn kl_loss(p: &[f64], s_r: &[f64], tau: f64) -> f64 {
    if p.is_empty() {
        return 0.0;
    }
    let q = softmax(s_r, tau);
    p.iter()
        .zip(&q)
        .map(|(a, b)| a * ((a + 1e-8) / (b + 1e-8)).ln())
        .sum()
}

pub fn to_rows(a: &ndarray::Array2<f64>) -> Mat {
    a.rows().into_iter().map(|r| r.to_vec()).collect()
}
