"""Sample-quality metrics for trained generators: 2-D mixtures (`mixture`), images (`image`,
`features`, `reference`), and the names every part of distgan uses for them (`names`)."""
