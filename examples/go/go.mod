module srvdns.example/find_service

go 1.19
