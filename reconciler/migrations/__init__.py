"""SQL migrations, applied in file-name order by `reconciler migrate`."""
