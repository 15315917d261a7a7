pub mod attr;
pub mod check;
pub mod ctxt;
pub mod ctype;
pub mod symbol;
