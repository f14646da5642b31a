//! Thin safe wrappers over the few CBLAS / LAPACK routines the solvers need.
//!
//! Why not ndarray-linalg's own `solve`/`solvec`: they take one right-hand side at a time, and a
//! weight update has `d_r` (hundreds to thousands) of them; one multi-RHS `potrs`/`getrs` call is
//! BLAS-3 and an order of magnitude faster. ndarray-linalg is still what links OpenBLAS.
//!
//! Conventions. Every owned matrix here is an ndarray `Array2<f64>` in standard (row-major)
//! layout. CBLAS calls use `CblasRowMajor`. LAPACK is column-major, so a row-major buffer of `M`
//! *is* the column-major buffer of `Mᵀ`; every LAPACK wrapper documents which matrix it sees.
//! For symmetric matrices we keep the row-major **upper** triangle valid, which LAPACK sees as
//! the column-major **lower** triangle (`uplo = 'L'`).

use std::ffi::{c_char, CStr};

use cblas_sys::{
    cblas_dgemm, cblas_dsymm, cblas_dsyrk, CblasLeft, CblasNoTrans, CblasRight, CblasRowMajor,
    CblasTrans, CblasUpper,
};
use lapack_sys::{dgecon_, dgetrf_, dgetrs_, dpocon_, dpotrf_, dpotrs_, dsyevr_};
use ndarray::{Array2, ArrayView2, CowArray, Ix2};

use crate::error::{Result, SolveError};

/// Checks that a dimension fits the i32 BLAS/LAPACK interface.
pub(crate) fn int(what: &'static str, value: usize) -> Result<i32> {
    i32::try_from(value).map_err(|_| SolveError::TooLarge { what, value })
}

/// A matrix operand ready for row-major CBLAS: `data` has unit column stride and a row stride
/// (leading dimension) of at least its column count. If `trans`, `data` holds the transpose of
/// the logical matrix (so an F-ordered view needs no copy).
struct Operand<'a> {
    data: CowArray<'a, f64, Ix2>,
    trans: bool,
}

impl Operand<'_> {
    fn ld(&self) -> usize {
        let (r, c) = self.data.dim();
        if r <= 1 {
            c.max(1)
        } else {
            self.data.strides()[0] as usize
        }
    }
}

fn row_major_ok(v: &ArrayView2<'_, f64>) -> bool {
    let (r, c) = v.dim();
    let s = v.strides();
    (c <= 1 || s[1] == 1) && (r <= 1 || s[0] >= c.max(1) as isize)
}

fn operand(v: ArrayView2<'_, f64>) -> Operand<'_> {
    if row_major_ok(&v) {
        Operand {
            data: v.into(),
            trans: false,
        }
    } else if row_major_ok(&v.t()) {
        Operand {
            data: v.reversed_axes().into(),
            trans: true,
        }
    } else {
        Operand {
            data: CowArray::from(v.as_standard_layout().into_owned()),
            trans: false,
        }
    }
}

fn owned_ok(c: &Array2<f64>) -> bool {
    c.is_standard_layout()
}

/// `c = alpha · op(a) · op(b) + beta · c`, `op` = transpose when the flag is set. `c` must be
/// standard layout with the right shape (checked by the callers, which own it).
pub(crate) fn gemm(
    alpha: f64,
    a: ArrayView2<'_, f64>,
    trans_a: bool,
    b: ArrayView2<'_, f64>,
    trans_b: bool,
    beta: f64,
    c: &mut Array2<f64>,
) -> Result<()> {
    let (m, k) = if trans_a {
        (a.ncols(), a.nrows())
    } else {
        a.dim()
    };
    let (k2, n) = if trans_b {
        (b.ncols(), b.nrows())
    } else {
        b.dim()
    };
    debug_assert_eq!(k, k2);
    debug_assert_eq!(c.dim(), (m, n));
    debug_assert!(owned_ok(c));
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        *c *= beta;
        return Ok(());
    }
    let oa = operand(a);
    let ob = operand(b);
    let ta = if trans_a != oa.trans {
        CblasTrans
    } else {
        CblasNoTrans
    };
    let tb = if trans_b != ob.trans {
        CblasTrans
    } else {
        CblasNoTrans
    };
    let (mi, ni, ki) = (
        int("rows", m)?,
        int("columns", n)?,
        int("inner dimension", k)?,
    );
    let (lda, ldb, ldc) = (int("lda", oa.ld())?, int("ldb", ob.ld())?, int("ldc", n)?);
    // SAFETY: the operands are valid for `ld * rows` reads with unit column stride (checked by
    // `operand`), `c` is a standard-layout m×n array, and all dimensions fit in i32.
    unsafe {
        cblas_dgemm(
            CblasRowMajor,
            ta,
            tb,
            mi,
            ni,
            ki,
            alpha,
            oa.data.as_ptr(),
            lda,
            ob.data.as_ptr(),
            ldb,
            beta,
            c.as_mut_ptr(),
            ldc,
        );
    }
    Ok(())
}

/// Upper triangle of `c` (d×d, standard layout) ← `alpha · aᵀa + beta · c`, with `a` of shape
/// rows×d. The strict lower triangle of `c` is not touched.
pub(crate) fn syrk_upper(
    alpha: f64,
    a: ArrayView2<'_, f64>,
    beta: f64,
    c: &mut Array2<f64>,
) -> Result<()> {
    let (rows, d) = a.dim();
    debug_assert_eq!(c.dim(), (d, d));
    debug_assert!(owned_ok(c));
    if d == 0 {
        return Ok(());
    }
    if rows == 0 {
        if beta != 1.0 {
            for i in 0..d {
                c.row_mut(i)
                    .slice_mut(ndarray::s![i..])
                    .mapv_inplace(|x| x * beta);
            }
        }
        return Ok(());
    }
    let oa = operand(a);
    // data holds a (rows×d) → C = dataᵀ·data: Trans; data holds aᵀ (d×rows) → data·dataᵀ: NoTrans.
    let t = if oa.trans { CblasNoTrans } else { CblasTrans };
    let (n, k) = (int("key dimension", d)?, int("rows", rows)?);
    let (lda, ldc) = (int("lda", oa.ld())?, n);
    // SAFETY: as in `gemm`; `c` is standard-layout d×d.
    unsafe {
        cblas_dsyrk(
            CblasRowMajor,
            CblasUpper,
            t,
            n,
            k,
            alpha,
            oa.data.as_ptr(),
            lda,
            beta,
            c.as_mut_ptr(),
            ldc,
        );
    }
    Ok(())
}

/// `c = alpha · S · b + beta · c` (`left`) or `c = alpha · b · S + beta · c` (`!left`), where `S`
/// is symmetric and only the upper triangle of `s` (standard layout) is read.
pub(crate) fn symm_upper(
    left: bool,
    alpha: f64,
    s: &Array2<f64>,
    b: ArrayView2<'_, f64>,
    beta: f64,
    c: &mut Array2<f64>,
) -> Result<()> {
    let (m, n) = b.dim();
    debug_assert_eq!(c.dim(), (m, n));
    debug_assert_eq!(s.nrows(), if left { m } else { n });
    debug_assert!(owned_ok(c) && owned_ok(s));
    if m == 0 || n == 0 {
        return Ok(());
    }
    let ob = operand(b);
    let ob = if ob.trans {
        Operand {
            data: CowArray::from(b.as_standard_layout().into_owned()),
            trans: false,
        }
    } else {
        ob
    };
    let side = if left { CblasLeft } else { CblasRight };
    let (mi, ni) = (int("rows", m)?, int("columns", n)?);
    let lds = int("lda", s.ncols().max(1))?;
    let (ldb, ldc) = (int("ldb", ob.ld())?, ni);
    // SAFETY: as in `gemm`; `s` is standard-layout and square of the side's dimension.
    unsafe {
        cblas_dsymm(
            CblasRowMajor,
            side,
            CblasUpper,
            mi,
            ni,
            alpha,
            s.as_ptr(),
            lds,
            ob.data.as_ptr(),
            ldb,
            beta,
            c.as_mut_ptr(),
            ldc,
        );
    }
    Ok(())
}

/// Copies the upper triangle of a standard-layout square matrix into its lower triangle.
/// Blocked so both the reads and the writes stay cache-friendly at d ≈ 10⁴.
pub(crate) fn symmetrize_from_upper(a: &mut Array2<f64>) {
    let n = a.nrows();
    const B: usize = 64;
    let data = a.as_slice_mut().expect("standard layout");
    for i0 in (0..n).step_by(B) {
        let i1 = (i0 + B).min(n);
        for j0 in (0..=i0).step_by(B) {
            let j1 = (j0 + B).min(n);
            // lower block (i in i0..i1, j in j0..j1, j < i) ← upper (j, i)
            for i in i0..i1 {
                for j in j0..j1.min(i) {
                    data[i * n + j] = data[j * n + i];
                }
            }
        }
    }
}

/// Row `i` (length d) of the full symmetric matrix whose upper triangle `u` holds, into `out`,
/// for rows `i0..i1` at once (`out` is (i1-i0)×d row-major).
pub(crate) fn symmetric_rows(u: &Array2<f64>, i0: usize, i1: usize, out: &mut [f64]) {
    let d = u.ncols();
    let src = u.as_slice().expect("standard layout");
    debug_assert_eq!(out.len(), (i1 - i0) * d);
    // Columns j < i0 come from rows j of the upper triangle (contiguous reads of i1-i0 values).
    for j in 0..i0 {
        let row = &src[j * d + i0..j * d + i1];
        for (ii, &v) in row.iter().enumerate() {
            out[ii * d + j] = v;
        }
    }
    for i in i0..i1 {
        let o = &mut out[(i - i0) * d..(i - i0 + 1) * d];
        for j in i0..i {
            o[j] = src[j * d + i];
        }
        o[i..].copy_from_slice(&src[i * d + i..(i + 1) * d]);
    }
}

/// 1-norm (max column sum) of the symmetric matrix whose upper triangle `a` holds.
pub(crate) fn sym_one_norm(a: &Array2<f64>) -> f64 {
    let n = a.nrows();
    let mut col = vec![0.0f64; n];
    for (i, row) in a.outer_iter().enumerate() {
        let r = row.as_slice().expect("standard layout");
        let mut row_sum = 0.0;
        for (j, &v) in r.iter().enumerate().skip(i) {
            let v = v.abs();
            col[j] += v;
            if j != i {
                row_sum += v;
            }
        }
        col[i] += row_sum;
    }
    col.into_iter().fold(0.0, f64::max)
}

/// 1-norm of the column-major matrix a row-major buffer holds (= the ∞-norm of the row-major
/// matrix: the max absolute row sum).
pub(crate) fn colmajor_one_norm(a: &Array2<f64>) -> f64 {
    a.outer_iter()
        .map(|r| r.iter().map(|v| v.abs()).sum::<f64>())
        .fold(0.0, f64::max)
}

/// Stack size of the helper thread LAPACK runs on.
const LAPACK_STACK_BYTES: usize = 64 << 20;

/// Runs a LAPACK call on a helper thread with a 64 MiB stack and waits for it.
///
/// OpenBLAS's threaded LAPACK keeps per-thread job arrays on the stack and recurses
/// (`dgetrf_parallel` needs more than 2 MiB at `n ≈ 500` with `MAX_THREADS=64`), which overflows
/// the 2 MiB stacks of threads Rust spawns (test threads, rayon workers) with a segfault. The
/// thread costs tens of microseconds, nothing next to a factorization.
fn on_lapack_thread<T: Send>(f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    std::thread::scope(|scope| {
        let handle = std::thread::Builder::new()
            .name("eamet-lapack".into())
            .stack_size(LAPACK_STACK_BYTES)
            .spawn_scoped(scope, f)
            .map_err(SolveError::Thread)?;
        match handle.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// An n×n standard-layout matrix as LAPACK sees it: its order, as `usize` and as a LAPACK
/// integer, and its leading dimension.
struct Square {
    /// Order `n` as a `usize`, for buffer sizes.
    n: usize,
    /// Order `n` as a LAPACK integer.
    ni: i32,
    /// Leading dimension of the column-major buffer, `max(n, 1)` (LAPACK wants at least 1 even
    /// for an empty matrix).
    ld: i32,
}

impl Square {
    /// Describes `a`, which must be square and standard layout (checked in debug builds), and
    /// checks that its order fits the i32 LAPACK interface.
    fn of(a: &Array2<f64>) -> Result<Self> {
        let n = a.nrows();
        debug_assert!(owned_ok(a) && a.ncols() == n);
        let ni = int("matrix order", n)?;
        Ok(Self {
            n,
            ni,
            ld: ni.max(1),
        })
    }
}

/// Runs one LAPACK call, handing it the `info` out-parameter. A negative `info` (an illegal
/// argument) becomes [`SolveError::Lapack`] naming `routine`; otherwise `info` is returned: 0, or
/// the routine's own positive failure code.
fn checked(routine: &'static str, call: impl FnOnce(&mut i32)) -> Result<i32> {
    let mut info = 0;
    call(&mut info);
    if info < 0 {
        Err(SolveError::Lapack { routine, info })
    } else {
        Ok(info)
    }
}

/// A factorization's positive `info` as the 1-based index it reports, `None` for success.
fn failed_at(info: i32) -> Option<usize> {
    (info > 0).then_some(info as usize)
}

/// Signature shared by `dpocon` and `dgecon`: `(uplo | norm, n, a, lda, anorm, rcond, work,
/// iwork, info)`.
type ConditionFn = unsafe extern "C" fn(
    *const c_char,
    *const i32,
    *const f64,
    *const i32,
    *const f64,
    *mut f64,
    *mut f64,
    *mut i32,
    *mut i32,
);

/// Reciprocal 1-norm condition estimate from the n×n factorization `factor` by `routine` (`dpocon`
/// or `dgecon`, called as `lapack` with `mode` as its first argument), which needs
/// `work_per_n · n` doubles and `n` integers of workspace. `anorm` is the 1-norm of the matrix
/// that was factored.
fn condition(
    routine: &'static str,
    lapack: ConditionFn,
    mode: &CStr,
    work_per_n: usize,
    factor: &Array2<f64>,
    anorm: f64,
) -> Result<f64> {
    let a = Square::of(factor)?;
    let mut work = vec![0.0; work_per_n * a.n.max(1)];
    let mut iwork = vec![0i32; a.n.max(1)];
    let mut rcond = 0.0;
    // SAFETY: `factor` is n×n standard layout with lda = max(n, 1); work and iwork have the sizes
    // LAPACK documents for both routines.
    checked(routine, |info| unsafe {
        lapack(
            mode.as_ptr(),
            &a.ni,
            factor.as_ptr(),
            &a.ld,
            &anorm,
            &mut rcond,
            work.as_mut_ptr(),
            iwork.as_mut_ptr(),
            info,
        )
    })?;
    Ok(rcond)
}

/// Shared frame of the multi-right-hand-side solves: `factor` is the n×n factorization and `b` is
/// row-major `nrhs × n`, i.e. column-major `B` (n × nrhs, ldb = n), overwritten by `X`. Makes no
/// call when `n` or `nrhs` is zero; otherwise `call` gets `(factor, nrhs, b, info)`.
fn solve_in_place(
    routine: &'static str,
    factor: &Array2<f64>,
    b: &mut Array2<f64>,
    call: impl FnOnce(&Square, &i32, *mut f64, &mut i32),
) -> Result<()> {
    let a = Square::of(factor)?;
    debug_assert!(owned_ok(b) && b.ncols() == a.n);
    let nrhs = int("right-hand sides", b.nrows())?;
    if a.n == 0 || b.nrows() == 0 {
        return Ok(());
    }
    checked(routine, |info| call(&a, &nrhs, b.as_mut_ptr(), info))?;
    Ok(())
}

/// A routine that sizes its own workspace, for [`with_workspace`]: the names its errors carry and
/// the least workspace it is given.
struct Workspace {
    /// Routine name for an illegal argument in the workspace query.
    query: &'static str,
    /// Routine name for an illegal argument in the real call.
    routine: &'static str,
    /// What a `lwork` too large for i32 is called.
    lwork: &'static str,
    /// What a `liwork` too large for i32 is called.
    liwork: &'static str,
    /// Least `lwork` (doubles), whatever the query reports.
    min_work: usize,
    /// Least `liwork` (integers), whatever the query reports.
    min_iwork: usize,
}

/// Calls `call(work, lwork, iwork, liwork, info)` twice: first as a workspace query (`lwork =
/// liwork = -1`; the optimal sizes come back in the first element of each buffer), then with
/// buffers of the reported sizes, raised to `spec`'s minimums. Returns the real call's `info`.
fn with_workspace(
    spec: &Workspace,
    mut call: impl FnMut(*mut f64, &i32, *mut i32, &i32, &mut i32),
) -> Result<i32> {
    let (mut lwork_q, mut liwork_q) = (0.0, 0i32);
    checked(spec.query, |info| {
        call(&mut lwork_q, &-1, &mut liwork_q, &-1, info)
    })?;
    let lwork = (lwork_q as usize).max(spec.min_work);
    let liwork = (liwork_q as usize).max(spec.min_iwork);
    let mut work = vec![0.0; lwork];
    let mut iwork = vec![0i32; liwork];
    let (lw, liw) = (int(spec.lwork, lwork)?, int(spec.liwork, liwork)?);
    checked(spec.routine, |info| {
        call(work.as_mut_ptr(), &lw, iwork.as_mut_ptr(), &liw, info)
    })
}

/// Cholesky factorization in place (`dpotrf`, column-major lower = row-major upper). Returns
/// `Ok(None)` on success or `Ok(Some(k))` when the leading minor of order `k` is not positive
/// definite. Runs on [`on_lapack_thread`].
pub(crate) fn potrf(a: &mut Array2<f64>) -> Result<Option<usize>> {
    on_lapack_thread(|| {
        let sq = Square::of(a)?;
        // SAFETY: `a` is a standard-layout n×n buffer, lda = max(n, 1).
        checked("dpotrf", |info| unsafe {
            dpotrf_(c"L".as_ptr(), &sq.ni, a.as_mut_ptr(), &sq.ld, info)
        })
        .map(failed_at)
    })
}

/// Reciprocal 1-norm condition estimate from a Cholesky factor (`dpocon`); `anorm` is the
/// 1-norm of the original matrix. Runs on [`on_lapack_thread`].
pub(crate) fn pocon(factor: &Array2<f64>, anorm: f64) -> Result<f64> {
    on_lapack_thread(|| condition("dpocon", dpocon_, c"L", 3, factor, anorm))
}

/// Solves `A X = B` for all `nrhs` columns at once (`dpotrs`) with the factor from [`potrf`].
/// `b` is row-major `nrhs × n`, i.e. column-major `B` (n × nrhs); it is overwritten by `X` in
/// the same layout. Runs on [`on_lapack_thread`].
pub(crate) fn potrs(factor: &Array2<f64>, b: &mut Array2<f64>) -> Result<()> {
    on_lapack_thread(|| {
        // SAFETY: factor n×n (lda n), b holds n·nrhs values with ldb = n.
        solve_in_place("dpotrs", factor, b, |a, nrhs, b, info| unsafe {
            dpotrs_(
                c"L".as_ptr(),
                &a.ni,
                nrhs,
                factor.as_ptr(),
                &a.ld,
                b,
                &a.ld,
                info,
            )
        })
    })
}

/// LU factorization with partial pivoting in place (`dgetrf`) of the column-major matrix the
/// buffer holds (for a row-major `M`, that is `Mᵀ`). Returns the pivots and, if `U` has an exact
/// zero on its diagonal, its 1-based index. Runs on [`on_lapack_thread`].
pub(crate) fn getrf(a: &mut Array2<f64>) -> Result<(Vec<i32>, Option<usize>)> {
    on_lapack_thread(|| {
        let sq = Square::of(a)?;
        let mut ipiv = vec![0i32; sq.n];
        // SAFETY: `a` is n×n standard layout (lda = max(n, 1)); ipiv has n entries.
        let info = checked("dgetrf", |info| unsafe {
            dgetrf_(
                &sq.ni,
                &sq.ni,
                a.as_mut_ptr(),
                &sq.ld,
                ipiv.as_mut_ptr(),
                info,
            )
        })?;
        Ok((ipiv, failed_at(info)))
    })
}

/// Reciprocal 1-norm condition estimate from an LU factorization (`dgecon`); `anorm` is the
/// 1-norm of the column-major matrix that was factored. Runs on [`on_lapack_thread`].
pub(crate) fn gecon(lu: &Array2<f64>, anorm: f64) -> Result<f64> {
    on_lapack_thread(|| condition("dgecon", dgecon_, c"1", 4, lu, anorm))
}

/// Solves `A X = B` (`dgetrs`, no transpose) for all columns at once, where `A` is the
/// column-major matrix factored by [`getrf`]. `b` is row-major `nrhs × n` (column-major `B`).
/// Runs on [`on_lapack_thread`].
pub(crate) fn getrs(lu: &Array2<f64>, ipiv: &[i32], b: &mut Array2<f64>) -> Result<()> {
    on_lapack_thread(|| {
        debug_assert_eq!(ipiv.len(), lu.nrows());
        // SAFETY: lu n×n, ipiv n, b n·nrhs with ldb = n.
        solve_in_place("dgetrs", lu, b, |a, nrhs, b, info| unsafe {
            dgetrs_(
                c"N".as_ptr(),
                &a.ni,
                nrhs,
                lu.as_ptr(),
                &a.ld,
                ipiv.as_ptr(),
                b,
                &a.ld,
                info,
            )
        })
    })
}

/// All eigenvalues (ascending) and eigenvectors of a symmetric matrix whose row-major upper
/// triangle `a` holds (`dsyevr`, MRRR: O(n) workspace, unlike `dsyevd`'s 2n²). `a` is destroyed.
/// The returned matrix `v` is row-major with **row `j` = eigenvector `j`**. Runs on
/// [`on_lapack_thread`].
pub(crate) fn syevr(a: &mut Array2<f64>) -> Result<(Vec<f64>, Array2<f64>)> {
    on_lapack_thread(|| {
        let sq = Square::of(a)?;
        let n = sq.n;
        let mut w = vec![0.0; n];
        let mut z = Array2::<f64>::zeros((n, n));
        if n == 0 {
            return Ok((w, z));
        }
        let mut isuppz = vec![0i32; 2 * n];
        let (vl, vu, il, iu) = (0.0, 0.0, 0, 0);
        let abstol = f64::MIN_POSITIVE;
        let mut m = 0;
        let spec = Workspace {
            query: "dsyevr (workspace query)",
            routine: "dsyevr",
            lwork: "dsyevr lwork",
            liwork: "dsyevr liwork",
            min_work: 26 * n,
            min_iwork: 10 * n,
        };
        // SAFETY (both calls): a, z are n×n standard layout (lda = ldz = n), w has n entries,
        // isuppz 2n; `with_workspace` passes work/iwork buffers matching lwork/liwork.
        let info = with_workspace(&spec, |work, lwork, iwork, liwork, info| unsafe {
            dsyevr_(
                c"V".as_ptr(),
                c"A".as_ptr(),
                c"L".as_ptr(),
                &sq.ni,
                a.as_mut_ptr(),
                &sq.ld,
                &vl,
                &vu,
                &il,
                &iu,
                &abstol,
                &mut m,
                w.as_mut_ptr(),
                z.as_mut_ptr(),
                &sq.ld,
                isuppz.as_mut_ptr(),
                work,
                lwork,
                iwork,
                liwork,
                info,
            )
        })?;
        if info > 0 || m != sq.ni {
            return Err(SolveError::Lapack {
                routine: "dsyevr (no convergence)",
                info,
            });
        }
        Ok((w, z))
    })
}
