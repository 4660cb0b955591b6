fn main() -> anyhow::Result<()> {
    anyhow::bail!("summond is not built yet (issue 4)")
}
