use sftok_model::sftok::LoadedSFTok;
use tch::{Device, Kind, Tensor};
fn main() -> anyhow::Result<()> {
    let dir = std::path::PathBuf::from(std::env::args().nth(1).unwrap());
    let cfg = sftok_model::sftok::resolve_config(&dir, None, &[])?;
    let m = LoadedSFTok::load(&dir, cfg, Device::Cpu)?;
    let paths: Vec<std::path::PathBuf> = std::fs::read_dir("/work/main/demo-out/imagenet/val")?.take(16).map(|e| e.unwrap().path()).collect();
    let imgs = sftok_model::eval::recon::load_eval_images(&paths, 64, 64)?;
    let x = sftok_model::eval::recon::to_tensor(&imgs, Device::Cpu);
    tch::manual_seed(0);
    let (_, q) = m.model.encode(&x);
    let tokens = q.min_encoding_indices.squeeze_dim(1);
    println!("tokens {:?}", Vec::<i64>::try_from(tokens.get(0))?);
    println!("tokens {:?}", Vec::<i64>::try_from(tokens.get(1))?);
    let out = m.model.decode_tokens(&tokens);
    let l = &out.generated.last_logits; // [B, L, V]
    let p = l.softmax(-1, Kind::Float);
    let maxp = p.max_dim(-1, false).0;
    println!("logits std over V {:.4}, max prob mean {:.4}", l.std_dim(-1, false, false).mean(Kind::Float).double_value(&[]), maxp.mean(Kind::Float).double_value(&[]));
    println!("logits: std across images {:.5}", l.std_dim(0, false, false).mean(Kind::Float).double_value(&[]));
    if m.model.pixel_quantize.is_none() { return Ok(()); }
    let emb = m.model.soft_embedding(l);
    println!("soft emb: std across images {:.5}, std over all {:.5}", emb.std_dim(0, false, false).mean(Kind::Float).double_value(&[]), emb.std(false).double_value(&[]));
    let img = out.image.unwrap();
    println!("image: std across images {:.5}, x std across images {:.5}", img.std_dim(0, false, false).mean(Kind::Float).double_value(&[]), x.std_dim(0, false, false).mean(Kind::Float).double_value(&[]));
    let pq = m.model.pixel_quantize.as_ref().unwrap();
    println!("pixel codebook std {:.4} shape {:?}", pq.embedding.std(false).double_value(&[]), pq.embedding.size());
    let _ = Tensor::zeros([1], (Kind::Float, Device::Cpu));
    Ok(())
}
