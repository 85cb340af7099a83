//! `DiffAug(prob, cutout)` (the reference's `modeling/modules/diff_aug.py`, ../shared/spec/sftok-training.md
//! §7.4): the differentiable augmentation applied to every discriminator input in stage 3.
//!
//! Draws, from libtorch's default generator and in this order: `rand([3])` (the three "apply?"
//! flags: translation, colour, cutout, each on when `≤ prob`), then `rand([7, B, 1, 1])` (rows: 0/1
//! translation h/w, 2 brightness, 3 saturation, 4 contrast, 5/6 cutout row/column). Then:
//! * translation by an integer offset `floor(r·(2δ+1)) − δ`, `δ = round(0.125·H)` (Python round:
//!   half to even), with a 1-px zero border and clamped indices;
//! * colour: `x + (r₂ − ½)`, `(x − m_c)·2r₃ + m_c` (channel mean), `(x − m)·(r₄ + ½) + m` (sample mean);
//! * cutout of a `round(cutout·H) × round(cutout·W)` block of zeros (clamped at the border).
//!
//! Everything is differentiable w.r.t. the input (the generator's GAN term back-propagates through it).

use tch::{Device, Kind, Tensor};

/// The augmentation's two knobs; the stage-3 configuration is [`DiffAug::reference`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DiffAug {
    /// Probability of each of the three augmentations (`abs` taken as in the reference; `< 1e-6`: none, no draws).
    pub prob: f64,
    /// Cutout size as a fraction of the image side (0 disables the cutout).
    pub cutout: f64,
}

/// The random draws of one [`DiffAug::aug_with_params`] call and the integers derived from them.
#[derive(Debug)]
pub struct AugParams {
    /// The raw `rand([3])` draw, float32 [3]; `None` when `prob < 1e-6` (nothing drawn).
    pub flags_rand: Option<Tensor>,
    /// Which of translation, colour, cutout were applied.
    pub applied: [bool; 3],
    /// The raw `rand([7, B, 1, 1])` draw as float32 [7, B]; `None` when nothing was applied (not drawn).
    pub rand01: Option<Tensor>,
    /// Translation offsets in pixels, int64 [B] (when the translation was applied).
    pub translation_h: Option<Tensor>,
    pub translation_w: Option<Tensor>,
    /// Cutout centres (before the `− size//2` shift), int64 [B] (when the cutout was applied).
    pub cutout_offset_h: Option<Tensor>,
    pub cutout_offset_w: Option<Tensor>,
}

/// Python's `round(v)` for the image-size products (half to even: 6.5 → 6).
fn py_round(v: f64) -> i64 {
    v.round_ties_even() as i64
}

/// `meshgrid(arange(b), arange(h), arange(w), indexing="ij")`, each int64 [b, h, w].
fn grids(b: i64, h: i64, w: i64, dev: Device) -> (Tensor, Tensor, Tensor) {
    let r = |n: i64| Tensor::arange(n, (Kind::Int64, dev));
    let g = Tensor::meshgrid_indexing(&[r(b), r(h), r(w)], "ij");
    (g[0].shallow_clone(), g[1].shallow_clone(), g[2].shallow_clone())
}

impl DiffAug {
    /// `DiffAug(prob=1.0, cutout=0.2)`, the stage-3 configuration.
    pub fn reference() -> DiffAug {
        DiffAug { prob: 1.0, cutout: 0.2 }
    }

    /// [B, C, H, W] → augmented [B, C, H, W] (float32); fresh draws on every call.
    pub fn aug(&self, x: &Tensor) -> Tensor {
        self.aug_with_params(x).0
    }

    /// As [`DiffAug::aug`], also returning the draws and the derived offsets.
    pub fn aug_with_params(&self, x: &Tensor) -> (Tensor, AugParams) {
        let mut x = if x.kind() == Kind::Float { x.shallow_clone() } else { x.to_kind(Kind::Float) };
        let prob = self.prob.abs();
        let mut params = AugParams {
            flags_rand: None,
            applied: [false; 3],
            rand01: None,
            translation_h: None,
            translation_w: None,
            cutout_offset_h: None,
            cutout_offset_w: None,
        };
        if prob < 1e-6 {
            return (x, params);
        }
        let (b, _c, h, w) = x.size4().expect("DiffAug input is [B, C, H, W]");
        let dev = x.device();
        // The flags come from the CPU generator (a CPU tensor in the reference), the rest from x's device.
        let flags = Tensor::rand([3], (Kind::Float, Device::Cpu));
        let [trans, color, cut] = [0, 1, 2].map(|i| flags.double_value(&[i]) <= prob);
        params.flags_rand = Some(flags);
        params.applied = [trans, color, cut];
        if !(trans || color || cut) {
            return (x, params);
        }
        let r = Tensor::rand([7, b, 1, 1], (Kind::Float, dev));
        let row = |i: i64| r.get(i); // [B, 1, 1]
        params.rand01 = Some(r.reshape([7, b]));

        if trans {
            let (dh, dw) = (py_round(h as f64 * 0.125), py_round(w as f64 * 0.125));
            let t_h = (row(0) * (2 * dh + 1)).floor().to_kind(Kind::Int64) - dh; // [B, 1, 1]
            let t_w = (row(1) * (2 * dw + 1)).floor().to_kind(Kind::Int64) - dw;
            let (gb, gh, gw) = grids(b, h, w, dev);
            let gh = (gh + &t_h + 1).clamp(0, h + 1);
            let gw = (gw + &t_w + 1).clamp(0, w + 1);
            let padded = x.constant_pad_nd([1, 1, 1, 1, 0, 0, 0, 0]);
            x = padded.permute([0, 2, 3, 1]).contiguous().index(&[Some(gb), Some(gh), Some(gw)]).permute([0, 3, 1, 2]).contiguous();
            params.translation_h = Some(t_h.reshape([b]));
            params.translation_w = Some(t_w.reshape([b]));
        }

        if color {
            x = &x + (row(2).unsqueeze(-1) - 0.5);
            let m = x.mean_dim(&[1i64][..], true, None::<Kind>);
            x = (&x - &m) * (row(3).unsqueeze(-1) * 2.0) + &m;
            let m = x.mean_dim(&[1i64, 2, 3][..], true, None::<Kind>);
            x = (&x - &m) * (row(4).unsqueeze(-1) + 0.5) + &m;
        }

        if cut {
            let (ch, cw) = (py_round(h as f64 * self.cutout), py_round(w as f64 * self.cutout));
            let off_h = (row(5) * (h + (1 - ch % 2))).floor().to_kind(Kind::Int64); // [B, 1, 1]
            let off_w = (row(6) * (w + (1 - cw % 2))).floor().to_kind(Kind::Int64);
            if ch > 0 && cw > 0 {
                let (gb, gh, gw) = grids(b, ch, cw, dev);
                let gh = (gh + &off_h - ch / 2).clamp(0, h - 1);
                let gw = (gw + &off_w - cw / 2).clamp(0, w - 1);
                let mut mask = Tensor::ones([b, h, w], (Kind::Float, dev));
                let _ = mask.index_put_(&[Some(gb), Some(gh), Some(gw)], &Tensor::zeros([], (Kind::Float, dev)), false);
                x = &x * mask.unsqueeze(1);
            }
            params.cutout_offset_h = Some(off_h.reshape([b]));
            params.cutout_offset_w = Some(off_w.reshape([b]));
        }
        (x, params)
    }
}
