//! A minimal pickle virtual machine: enough of protocols 2–5 to read what `torch.save` writes for
//! a (possibly nested) dict of tensors. Objects that are not containers or tensors stay symbolic
//! (`Value::Object`), so unusual checkpoints still parse and their tensors are found.

use anyhow::{Result, anyhow, bail};
use std::cell::RefCell;
use std::rc::Rc;

/// A storage reference from a persistent id: `('storage', StorageType, key, location, numel, …)`.
#[derive(Clone, Debug)]
pub struct StorageRef {
    /// `FloatStorage`, `HalfStorage`, `LongStorage`, …
    pub storage_type: String,
    pub key: String,
}

/// A tensor as rebuilt by `torch._utils._rebuild_tensor_v2`: a view into a storage.
#[derive(Clone, Debug)]
pub struct TensorRef {
    pub storage: StorageRef,
    pub offset: i64,
    pub size: Vec<i64>,
    pub stride: Vec<i64>,
}

// Some payloads are only read through `Debug` (in error messages about unexpected content).
#[allow(dead_code)]
#[derive(Clone, Debug)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer wider than 64 bits, little-endian two's complement bytes.
    BigInt(Vec<u8>),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    List(Rc<RefCell<Vec<Value>>>),
    Dict(Rc<RefCell<Vec<(Value, Value)>>>),
    /// `module.name` from GLOBAL / STACK_GLOBAL.
    Global(String),
    Storage(StorageRef),
    Tensor(TensorRef),
    /// Anything else: the callable's name and its arguments.
    Object(String, Vec<Value>),
    Mark,
}

impl Value {
    fn int(&self) -> Result<i64> {
        match self {
            Value::Int(i) => Ok(*i),
            Value::Bool(b) => Ok(*b as i64),
            other => bail!("expected an integer in the pickle, found {other:?}"),
        }
    }

    fn int_list(&self) -> Result<Vec<i64>> {
        match self {
            Value::Tuple(v) => v.iter().map(Value::int).collect(),
            Value::List(v) => v.borrow().iter().map(Value::int).collect(),
            other => bail!("expected a tuple of integers (tensor size/stride), found {other:?}"),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len()).ok_or_else(|| anyhow!("pickle truncated"))?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into()?))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into()?))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into()?))
    }
    fn line(&mut self) -> Result<&'a str> {
        let rest = &self.data[self.pos..];
        let n = rest.iter().position(|&b| b == b'\n').ok_or_else(|| anyhow!("pickle truncated in a text line"))?;
        self.pos += n + 1;
        Ok(std::str::from_utf8(&rest[..n])?)
    }
}

/// Unpickles one object starting at `data[*pos]`; advances `pos` past its STOP opcode (the legacy
/// torch format is several pickles back to back).
pub fn load(data: &[u8], pos: &mut usize) -> Result<Value> {
    let mut r = Reader { data, pos: *pos };
    let mut stack: Vec<Value> = Vec::new();
    let mut memo: std::collections::HashMap<u32, Value> = std::collections::HashMap::new();
    let pop = |stack: &mut Vec<Value>| stack.pop().ok_or_else(|| anyhow!("pickle stack underflow"));
    let pop_mark = |stack: &mut Vec<Value>| -> Result<Vec<Value>> {
        let m = stack.iter().rposition(|v| matches!(v, Value::Mark)).ok_or_else(|| anyhow!("pickle MARK missing"))?;
        let items = stack.split_off(m + 1);
        stack.pop();
        Ok(items)
    };
    loop {
        let op = r.u8()?;
        match op {
            0x80 => {
                r.u8()?; // PROTO
            }
            0x95 => {
                r.u64()?; // FRAME
            }
            b'.' => break, // STOP
            b'(' => stack.push(Value::Mark),
            b'N' => stack.push(Value::None),
            0x88 => stack.push(Value::Bool(true)),
            0x89 => stack.push(Value::Bool(false)),
            b'J' => stack.push(Value::Int(r.u32()? as i32 as i64)),
            b'K' => stack.push(Value::Int(r.u8()? as i64)),
            b'M' => stack.push(Value::Int(r.u16()? as i64)),
            b'I' => {
                let l = r.line()?;
                stack.push(match l {
                    "00" => Value::Bool(false),
                    "01" => Value::Bool(true),
                    _ => Value::Int(l.parse()?),
                })
            }
            b'L' => stack.push(Value::Int(r.line()?.trim_end_matches('L').parse()?)),
            0x8a | 0x8b => {
                // LONG1 / LONG4: little-endian two's complement
                let n = if op == 0x8a { r.u8()? as usize } else { r.u32()? as usize };
                let bytes = r.take(n)?;
                if n > 8 {
                    // Only the legacy format's magic number is this large.
                    stack.push(Value::BigInt(bytes.to_vec()));
                    continue;
                }
                let mut v: i64 = 0;
                for (i, b) in bytes.iter().enumerate() {
                    v |= (*b as i64) << (8 * i);
                }
                if n > 0 && n < 8 && bytes[n - 1] & 0x80 != 0 {
                    v -= 1i64 << (8 * n);
                }
                stack.push(Value::Int(v));
            }
            b'G' => stack.push(Value::Float(f64::from_be_bytes(r.take(8)?.try_into()?))),
            b'F' => stack.push(Value::Float(r.line()?.parse()?)),
            0x8c => {
                let n = r.u8()? as usize;
                stack.push(Value::Str(String::from_utf8_lossy(r.take(n)?).into_owned()))
            }
            b'X' => {
                let n = r.u32()? as usize;
                stack.push(Value::Str(String::from_utf8_lossy(r.take(n)?).into_owned()))
            }
            0x8d => {
                let n = r.u64()? as usize;
                stack.push(Value::Str(String::from_utf8_lossy(r.take(n)?).into_owned()))
            }
            b'U' => {
                let n = r.u8()? as usize;
                stack.push(Value::Str(String::from_utf8_lossy(r.take(n)?).into_owned()))
            }
            b'T' => {
                let n = r.u32()? as usize;
                stack.push(Value::Str(String::from_utf8_lossy(r.take(n)?).into_owned()))
            }
            b'C' => {
                let n = r.u8()? as usize;
                stack.push(Value::Bytes(r.take(n)?.to_vec()))
            }
            b'B' => {
                let n = r.u32()? as usize;
                stack.push(Value::Bytes(r.take(n)?.to_vec()))
            }
            0x8e => {
                let n = r.u64()? as usize;
                stack.push(Value::Bytes(r.take(n)?.to_vec()))
            }
            b'V' => stack.push(Value::Str(r.line()?.to_string())),
            b'}' => stack.push(Value::Dict(Rc::new(RefCell::new(Vec::new())))),
            b']' => stack.push(Value::List(Rc::new(RefCell::new(Vec::new())))),
            b')' => stack.push(Value::Tuple(Vec::new())),
            b't' => {
                let items = pop_mark(&mut stack)?;
                stack.push(Value::Tuple(items))
            }
            0x85 => {
                let a = pop(&mut stack)?;
                stack.push(Value::Tuple(vec![a]))
            }
            0x86 => {
                let b = pop(&mut stack)?;
                let a = pop(&mut stack)?;
                stack.push(Value::Tuple(vec![a, b]))
            }
            0x87 => {
                let c = pop(&mut stack)?;
                let b = pop(&mut stack)?;
                let a = pop(&mut stack)?;
                stack.push(Value::Tuple(vec![a, b, c]))
            }
            b'l' => {
                let items = pop_mark(&mut stack)?;
                stack.push(Value::List(Rc::new(RefCell::new(items))))
            }
            b'd' => {
                let items = pop_mark(&mut stack)?;
                let pairs = items.chunks(2).filter(|c| c.len() == 2).map(|c| (c[0].clone(), c[1].clone())).collect();
                stack.push(Value::Dict(Rc::new(RefCell::new(pairs))))
            }
            b'a' => {
                let v = pop(&mut stack)?;
                match stack.last() {
                    Some(Value::List(l)) => l.borrow_mut().push(v),
                    _ => bail!("pickle APPEND on a non-list"),
                }
            }
            b'e' => {
                let items = pop_mark(&mut stack)?;
                match stack.last() {
                    Some(Value::List(l)) => l.borrow_mut().extend(items),
                    _ => bail!("pickle APPENDS on a non-list"),
                }
            }
            b's' => {
                let v = pop(&mut stack)?;
                let k = pop(&mut stack)?;
                match stack.last() {
                    Some(Value::Dict(d)) => d.borrow_mut().push((k, v)),
                    _ => bail!("pickle SETITEM on a non-dict"),
                }
            }
            b'u' => {
                let items = pop_mark(&mut stack)?;
                match stack.last() {
                    Some(Value::Dict(d)) => {
                        let mut d = d.borrow_mut();
                        for c in items.chunks(2).filter(|c| c.len() == 2) {
                            d.push((c[0].clone(), c[1].clone()));
                        }
                    }
                    _ => bail!("pickle SETITEMS on a non-dict"),
                }
            }
            b'q' => {
                let i = r.u8()? as u32;
                memo.insert(i, stack.last().cloned().ok_or_else(|| anyhow!("pickle BINPUT on empty stack"))?);
            }
            b'r' => {
                let i = r.u32()?;
                memo.insert(i, stack.last().cloned().ok_or_else(|| anyhow!("pickle LONG_BINPUT on empty stack"))?);
            }
            b'p' => {
                let i: u32 = r.line()?.parse()?;
                memo.insert(i, stack.last().cloned().ok_or_else(|| anyhow!("pickle PUT on empty stack"))?);
            }
            0x94 => {
                let i = memo.len() as u32;
                memo.insert(i, stack.last().cloned().ok_or_else(|| anyhow!("pickle MEMOIZE on empty stack"))?);
            }
            b'h' => {
                let i = r.u8()? as u32;
                stack.push(memo.get(&i).cloned().ok_or_else(|| anyhow!("pickle memo {i} missing"))?)
            }
            b'j' => {
                let i = r.u32()?;
                stack.push(memo.get(&i).cloned().ok_or_else(|| anyhow!("pickle memo {i} missing"))?)
            }
            b'g' => {
                let i: u32 = r.line()?.parse()?;
                stack.push(memo.get(&i).cloned().ok_or_else(|| anyhow!("pickle memo {i} missing"))?)
            }
            b'c' => {
                let module = r.line()?;
                let name = r.line()?;
                stack.push(Value::Global(format!("{module}.{name}")))
            }
            0x93 => {
                let name = pop(&mut stack)?;
                let module = pop(&mut stack)?;
                match (module, name) {
                    (Value::Str(m), Value::Str(n)) => stack.push(Value::Global(format!("{m}.{n}"))),
                    _ => bail!("pickle STACK_GLOBAL needs two strings"),
                }
            }
            b'Q' => {
                let pid = pop(&mut stack)?;
                stack.push(persistent(pid)?)
            }
            b'R' | 0x81 => {
                // REDUCE / NEWOBJ
                let args = pop(&mut stack)?;
                let callable = pop(&mut stack)?;
                let args = match args {
                    Value::Tuple(a) => a,
                    other => vec![other],
                };
                stack.push(call(callable, args)?)
            }
            0x92 => {
                // NEWOBJ_EX
                let _kwargs = pop(&mut stack)?;
                let args = pop(&mut stack)?;
                let cls = pop(&mut stack)?;
                let args = match args {
                    Value::Tuple(a) => a,
                    other => vec![other],
                };
                stack.push(call(cls, args)?)
            }
            b'b' => {
                // BUILD: state for the object below. Dicts (OrderedDict `_metadata`) and opaque
                // objects don't need it for tensor loading.
                pop(&mut stack)?;
            }
            0x90 => {
                // ADDITEMS (sets)
                pop_mark(&mut stack)?;
            }
            0x8f => stack.push(Value::List(Rc::new(RefCell::new(Vec::new())))), // EMPTY_SET
            0x91 => {
                let items = pop_mark(&mut stack)?; // FROZENSET
                stack.push(Value::Tuple(items))
            }
            b'0' => {
                pop(&mut stack)?;
            }
            b'2' => {
                let v = stack.last().cloned().ok_or_else(|| anyhow!("pickle DUP on empty stack"))?;
                stack.push(v)
            }
            b'1' => {
                pop_mark(&mut stack)?;
            }
            other => bail!("unsupported pickle opcode 0x{other:02x} at byte {}", r.pos - 1),
        }
    }
    *pos = r.pos;
    pop(&mut stack)
}

/// `('storage', StorageType, key, location, numel[, view_metadata])`.
fn persistent(pid: Value) -> Result<Value> {
    let Value::Tuple(items) = pid else { bail!("unexpected persistent id {pid:?}") };
    match items.first().and_then(Value::as_str) {
        Some("storage") if items.len() >= 3 => {
            let storage_type = match &items[1] {
                Value::Global(g) => g.rsplit('.').next().unwrap_or(g).to_string(),
                Value::Str(s) => s.clone(),
                other => bail!("unexpected storage type {other:?}"),
            };
            let key = match &items[2] {
                Value::Str(s) => s.clone(),
                Value::Int(i) => i.to_string(),
                other => bail!("unexpected storage key {other:?}"),
            };
            Ok(Value::Storage(StorageRef { storage_type, key }))
        }
        _ => bail!("unsupported persistent id {items:?}"),
    }
}

fn call(callable: Value, args: Vec<Value>) -> Result<Value> {
    let name = match &callable {
        Value::Global(g) => g.as_str(),
        other => bail!("pickle calls a non-global {other:?}"),
    };
    match name {
        "torch._utils._rebuild_tensor_v2" | "torch._utils._rebuild_tensor" => {
            let [storage, offset, size, stride, ..] = args.as_slice() else {
                bail!("{name} with {} arguments", args.len())
            };
            let Value::Storage(storage) = storage else { bail!("{name}: first argument is not a storage") };
            Ok(Value::Tensor(TensorRef {
                storage: storage.clone(),
                offset: offset.int()?,
                size: size.int_list()?,
                stride: stride.int_list()?,
            }))
        }
        "torch._utils._rebuild_parameter" | "torch._utils._rebuild_parameter_with_state" => {
            args.into_iter().next().ok_or_else(|| anyhow!("{name} without data"))
        }
        // `_rebuild_from_type_v2(func, new_type, args, state)`: tensor subclasses (Parameter).
        "torch._tensor._rebuild_from_type_v2" => {
            let mut it = args.into_iter();
            let func = it.next().ok_or_else(|| anyhow!("{name} without func"))?;
            let _new_type = it.next();
            let inner = match it.next() {
                Some(Value::Tuple(a)) => a,
                other => bail!("{name}: args {other:?}"),
            };
            call(func, inner)
        }
        "collections.OrderedDict" | "builtins.dict" => {
            let d = Value::Dict(Rc::new(RefCell::new(Vec::new())));
            // OrderedDict([(k, v), …]) form.
            if let (Value::Dict(dd), Some(Value::List(items))) = (&d, args.first()) {
                for it in items.borrow().iter() {
                    if let Value::Tuple(kv) = it
                        && kv.len() == 2
                    {
                        dd.borrow_mut().push((kv[0].clone(), kv[1].clone()));
                    }
                }
            }
            Ok(d)
        }
        _ => Ok(Value::Object(name.to_string(), args)),
    }
}
