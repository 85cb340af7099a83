//! OptVQ quantizer (prefix `quantize.`, ../shared/spec/sftok-model.md §5): l2-normalised tokens,
//! a codebook seen through a shared linear layer, batch-wide Sinkhorn assignment, straight-through
//! estimator. Always float32.
//!
//! Note: the assignment is balanced over *every token of the call*, so an image's codes depend on
//! the rest of its batch (reference behaviour, reproduced exactly).

use tch::nn::{self, Module};
use tch::{Kind, Reduction, Tensor};

#[derive(Clone, Debug, PartialEq)]
pub struct OptVqConfig {
    pub codebook_size: i64,
    pub token_size: i64,
    pub commitment_cost: f64,
}

const SINKHORN_EPSILON: f64 = 10.0;
const SINKHORN_ITERS: usize = 5;

#[derive(Debug)]
pub struct OptVq {
    /// [1, K, D]: a bare parameter named `embedding` (no `.weight`).
    pub embedding: Tensor,
    shared_linear: nn::Linear,
    /// int64 buffer [1] (group offset, 0).
    index_offset: Tensor,
    cfg: OptVqConfig,
}

/// Everything `quantize(z)` returns besides the STE latent.
#[derive(Debug)]
pub struct QuantizerOutput {
    pub quantizer_loss: Tensor,
    pub commitment_loss: Tensor,
    pub codebook_loss: Tensor,
    /// [B, 1, N] int64 in [0, K).
    pub min_encoding_indices: Tensor,
    /// The l2-normalised encoder output [B, 1, N, D], detached (for [`QuantizerOutput::latent_spread`]).
    pub z_n: Tensor,
}

impl QuantizerOutput {
    /// Not in the reference: the spread of the l2-normalised encoder output across the batch's
    /// images (population std over B, averaged over tokens and channels). About 0 when the
    /// encoder's output no longer depends on the image (collapse): the codes still differ then,
    /// because the balanced assignment spreads identical tokens over the codebook.
    pub fn latent_spread(&self) -> f64 {
        self.z_n.std_dim(0, false, false).mean(Kind::Float).double_value(&[])
    }
}

/// `F.normalize(v, p=2, dim=-1, eps=1e-12)`.
pub fn l2_normalize(v: &Tensor) -> Tensor {
    let norm = v.norm_scalaropt_dim(2, [-1i64].as_slice(), true).clamp_min(1e-12);
    v / norm.expand_as(v)
}

impl OptVq {
    pub fn new(p: nn::Path, cfg: &OptVqConfig) -> Self {
        let (k, d) = (cfg.codebook_size, cfg.token_size);
        let lim = 1.0 / k as f64;
        let embedding = p.var("embedding", &[1, k, d], nn::Init::Uniform { lo: -lim, up: lim });
        let shared_linear = nn::linear(&p / "shared_linear", d, d, Default::default());
        tch::no_grad(|| {
            let mut ws = shared_linear.ws.shallow_clone();
            ws.copy_(&Tensor::eye(d, (Kind::Float, ws.device())));
            let mut bs = shared_linear.bs.as_ref().expect("bias").shallow_clone();
            let _ = bs.zero_();
        });
        let index_offset = p.add("index_offset", Tensor::zeros([1], (Kind::Int64, p.device())), false);
        OptVq { embedding, shared_linear, index_offset, cfg: cfg.clone() }
    }

    /// `normalize(shared_linear(embedding))` → [K, D].
    fn codebook(&self) -> Tensor {
        l2_normalize(&self.shared_linear.forward(&self.embedding)).squeeze_dim(0)
    }

    /// Exact normalised code vectors for any integer tensor of indices → [numel, D].
    pub fn get_codebook_entry(&self, indices: &Tensor) -> Tensor {
        let idx = (indices.reshape([-1, 1]) + &self.index_offset).flatten(0, -1);
        let table = self.shared_linear.forward(&self.embedding).view([-1, self.cfg.token_size]);
        l2_normalize(&table.index_select(0, &idx))
    }

    /// Balanced assignment of normalised tokens [N, D] to codes [K, D] (no gradient).
    fn sinkhorn_assign(&self, z_hat: &Tensor, codes: &Tensor) -> Tensor {
        tch::no_grad(|| {
            let n = z_hat.size()[0] as f64;
            let k = codes.size()[0] as f64;
            let d = Tensor::cdist(z_hat, codes, 2.0, None::<i64>); // [N, K]
            let d = &d - d.min();
            let mut q = (d * -SINKHORN_EPSILON).exp().tr(); // [K, N]
            q = &q / (q.sum(Kind::Float) + 1e-8);
            for _ in 0..SINKHORN_ITERS {
                q = &q / (q.sum_dim_intlist(1, true, Kind::Float) + 1e-8);
                q = q / k;
                q = &q / (q.sum_dim_intlist(0, true, Kind::Float) + 1e-8);
                q = q / n;
            }
            (q * n).tr().argmax(1, false)
        })
    }

    /// z: [B, D, 1, N] → (z_q_ste [B, D, 1, N], losses and indices).
    pub fn forward(&self, z: &Tensor) -> (Tensor, QuantizerOutput) {
        let z = z.to_kind(Kind::Float);
        let (b, d, _, n) = z.size4().expect("[B, D, 1, N]");
        let z = z.permute([0, 2, 3, 1]); // [B, 1, N, D]
        let z_n = l2_normalize(&z);
        let indices = self.sinkhorn_assign(&z_n.reshape([-1, d]), &self.codebook()).view([b, n]);
        let z_q = self.get_codebook_entry(&indices).view([b, 1, n, d]);
        let commitment_loss = z_q.detach().mse_loss(&z_n, Reduction::Mean) * self.cfg.commitment_cost;
        let codebook_loss = z_q.mse_loss(&z_n.detach(), Reduction::Mean);
        let quantizer_loss = &commitment_loss + &codebook_loss;
        // Straight-through estimator; the value z_n + (z_q − z_n) is kept exactly (rounding).
        let z_q_ste = &z_n + (&z_q - &z_n).detach();
        let out = QuantizerOutput {
            quantizer_loss,
            commitment_loss,
            codebook_loss,
            min_encoding_indices: indices.view([b, 1, n]),
            z_n: z_n.detach(),
        };
        (z_q_ste.permute([0, 3, 1, 2]), out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quantizer() -> (nn::VarStore, OptVq) {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let q = OptVq::new(vs.root() / "quantize", &OptVqConfig { codebook_size: 4, token_size: 8, commitment_cost: 0.25 });
        (vs, q)
    }

    #[test]
    fn latent_spread_is_zero_for_identical_images_and_the_population_std_otherwise() {
        let (_vs, q) = quantizer();
        // One token per image, D = 8: image 0 along e0 (length 3), image 1 along e1 (length 0.5).
        // Normalised, coordinates 0 and 1 take {1, 0} over the batch (population std 0.5), the
        // other six are 0: the mean over the 8 channels is 1/8.
        let mut v = vec![0f32; 16];
        v[0] = 3.0;
        v[8 + 1] = 0.5;
        let z = Tensor::from_slice(&v).reshape([2, 1, 1, 8]).permute([0, 3, 1, 2]); // [B, D, 1, N]
        let spread = q.forward(&z).1.latent_spread();
        assert!((spread - 0.125).abs() < 1e-7, "{spread}");
        let same = Tensor::randn([1, 8, 1, 3], (Kind::Float, tch::Device::Cpu)).repeat([4, 1, 1, 1]);
        assert_eq!(q.forward(&same).1.latent_spread(), 0.0);
    }
}
