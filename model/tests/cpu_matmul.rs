//! The CPU's float32 matmul route (cpu_matmul.rs, csrc/sftok_matmul.cpp). One test: the route is
//! process-wide, so the steps run in order — MKL's results first, then oneDNN's, then MKL again.

use sftok_model::cpu_matmul::{self, AUTO_MIN_MNK, CpuMatmul};
use tch::{Device, Kind, Tensor, nn, nn::Module};

fn f64_err(got: &Tensor, exact: &Tensor) -> f64 {
    (got.to_kind(Kind::Double) - exact)
        .abs()
        .max()
        .double_value(&[])
}

/// |a| @ |b| in float64: the scale of each output's rounding error (the float32 product bound is
/// k · 2^-24 times it, per output).
fn magnitude(a: &Tensor, b: &Tensor) -> f64 {
    a.to_kind(Kind::Double)
        .abs()
        .mm(&b.to_kind(Kind::Double).abs())
        .max()
        .double_value(&[])
}

struct LinearStep {
    y: Tensor,
    gx: Tensor,
    gw: Tensor,
    gb: Tensor,
}

/// A linear layer's forward (addmm over [B·T, in]) and backward (two mm) on fixed inputs.
fn linear_step(x: &Tensor, w: &Tensor, b: &Tensor) -> LinearStep {
    let vs = nn::VarStore::new(Device::Cpu);
    let mut lin = nn::linear(
        vs.root() / "l",
        w.size()[1],
        w.size()[0],
        Default::default(),
    );
    tch::no_grad(|| {
        lin.ws.copy_(w);
        lin.bs.as_mut().unwrap().copy_(b);
    });
    let x = x.detach().set_requires_grad(true);
    let y = lin.forward(&x);
    (&y * &y).sum(Kind::Float).backward();
    LinearStep {
        y: y.detach(),
        gx: x.grad(),
        gw: lin.ws.grad(),
        gb: lin.bs.as_ref().unwrap().grad(),
    }
}

#[test]
fn float32_products_go_to_onednn_in_float32_and_everything_else_to_aten() {
    tch::manual_seed(7);
    let a = Tensor::randn([300, 500], (Kind::Float, Device::Cpu));
    let b = Tensor::randn([500, 400], (Kind::Float, Device::Cpu));
    let (x, w, bias) = (
        Tensor::randn([4, 100, 256], (Kind::Float, Device::Cpu)),
        Tensor::randn([1024, 256], (Kind::Float, Device::Cpu)) * 0.05,
        Tensor::randn([1024], (Kind::Float, Device::Cpu)),
    );
    let small = Tensor::randn([16, 16], (Kind::Float, Device::Cpu));
    let a64 = a.to_kind(Kind::Double);

    let onednn = cpu_matmul::apply("onednn");
    if !(std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512dq"))
    {
        // oneDNN's float32 matmul needs AVX-512: forcing it must fail with the way out named.
        let err = onednn.unwrap_err().to_string();
        assert!(
            err.contains("SFTOK_CPU_MATMUL=onednn") && err.contains("mkl"),
            "{err}"
        );
        assert_eq!(cpu_matmul::active(), CpuMatmul::Mkl);
        return;
    }
    assert_eq!(cpu_matmul::apply("mkl").unwrap(), CpuMatmul::Mkl);
    let mkl_mm = a.mm(&b);
    let mkl_t = a.tr().tr().contiguous().mm(&b.tr().contiguous().tr()); // a column-major right operand
    let mkl_lin = linear_step(&x, &w, &bias);
    let mkl_small = small.mm(&small);
    let mkl_f64 = a64.mm(&b.to_kind(Kind::Double));
    let before = cpu_matmul::onednn_products();
    let mkl_mm_again = a.mm(&b);
    assert_eq!(
        cpu_matmul::onednn_products(),
        before,
        "with the route off nothing goes to oneDNN"
    );

    assert_eq!(onednn.unwrap(), CpuMatmul::OneDnn { min_mnk: 1 });
    assert_eq!(
        cpu_matmul::apply("onednn").unwrap(),
        CpuMatmul::OneDnn { min_mnk: 1 }
    );
    assert_eq!(cpu_matmul::active(), CpuMatmul::OneDnn { min_mnk: 1 });
    let n0 = cpu_matmul::onednn_products();
    let dnn_mm = a.mm(&b);
    assert_eq!(
        cpu_matmul::onednn_products(),
        n0 + 1,
        "a float32 mm goes to oneDNN"
    );
    let dnn_t = a.tr().tr().contiguous().mm(&b.tr().contiguous().tr());
    let n1 = cpu_matmul::onednn_products();
    let dnn_lin = linear_step(&x, &w, &bias);
    // The linear's forward addmm and its backward's two mm (grad of x, grad of the weight).
    assert_eq!(
        cpu_matmul::onednn_products(),
        n1 + 3,
        "a linear layer's forward and backward products go to oneDNN"
    );
    let n2 = cpu_matmul::onednn_products();
    let dnn_f64 = a64.mm(&b.to_kind(Kind::Double));
    assert_eq!(cpu_matmul::onednn_products(), n2, "float64 stays with ATen");
    assert_eq!(dnn_f64, mkl_f64, "float64 products are ATen's, bit for bit");

    // Float32 accuracy: within the float32 bound, and about as close to float64 as MKL's.
    let exact = a64.mm(&b.to_kind(Kind::Double));
    let bound = a.size()[1] as f64 * 2f64.powi(-24) * magnitude(&a, &b);
    let (e_dnn, e_mkl) = (f64_err(&dnn_mm, &exact), f64_err(&mkl_mm, &exact));
    assert!(
        e_dnn <= bound && e_dnn <= 8.0 * e_mkl,
        "oneDNN error {e_dnn:.3e} vs MKL {e_mkl:.3e}, bound {bound:.3e}"
    );
    assert!(f64_err(&dnn_t, &exact) <= bound, "transposed operands");
    assert!(
        dnn_mm != mkl_mm || dnn_t != mkl_t,
        "oneDNN's rounding is not MKL's: identical results mean the route did not run"
    );
    assert_eq!(dnn_mm, a.mm(&b), "oneDNN is deterministic");

    // The linear step: the bias broadcast and both backward products agree with MKL's to float32
    // rounding (a bias dropped or a transposed gradient would be off by O(1)).
    for (name, got, want) in [
        ("y", &dnn_lin.y, &mkl_lin.y),
        ("grad x", &dnn_lin.gx, &mkl_lin.gx),
        ("grad w", &dnn_lin.gw, &mkl_lin.gw),
        ("grad b", &dnn_lin.gb, &mkl_lin.gb),
    ] {
        assert_eq!(got.size(), want.size(), "{name}");
        let scale = want.abs().max().double_value(&[]);
        let d = (got - want).abs().max().double_value(&[]);
        assert!(
            d <= 2e-5 * scale,
            "{name}: |oneDNN − MKL| {d:.3e}, scale {scale:.3e}"
        );
    }

    // auto on this CPU: small products stay with MKL, large ones go to oneDNN.
    let auto = cpu_matmul::apply("auto").unwrap();
    let amd = {
        let v = std::arch::x86_64::__cpuid(0);
        [v.ebx, v.edx, v.ecx]
            .iter()
            .flat_map(|r| r.to_le_bytes())
            .collect::<Vec<u8>>()
            != b"GenuineIntel"
    };
    if amd {
        assert_eq!(
            auto,
            CpuMatmul::OneDnn {
                min_mnk: AUTO_MIN_MNK
            }
        );
        let n3 = cpu_matmul::onednn_products();
        assert_eq!(
            small.mm(&small),
            mkl_small,
            "16x16x16 stays with MKL under auto"
        );
        assert_eq!(cpu_matmul::onednn_products(), n3);
        assert_eq!(a.mm(&b), dnn_mm, "300x500x400 goes to oneDNN under auto");
        assert_eq!(cpu_matmul::onednn_products(), n3 + 1);
    } else {
        assert_eq!(auto, CpuMatmul::Mkl);
    }

    // And off again: ATen's kernel, bit for bit what it gave before.
    cpu_matmul::apply("mkl").unwrap();
    assert_eq!(a.mm(&b), mkl_mm_again);
    assert_eq!(mkl_mm_again, mkl_mm);
}
